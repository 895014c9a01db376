"""The wheel's package list (pyproject.toml) names every package of the tree, so a new one is not left out."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_in_the_wheel():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(Path(folder).relative_to(ROOT).parts)  # through the mvg_rt/export and mvg_rt/runtime links
             for folder, _, files in os.walk(ROOT / "mvg_rt", followlinks=True) if "__init__.py" in files}
    assert declared == found
