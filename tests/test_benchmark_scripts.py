"""Every script under ``benchmarks/`` imports, and its ``main`` answers ``--help`` (issue 20).

The scripts sit outside the package and its tests, so a module they import can be renamed or deleted
without anything failing until someone reruns a committed measurement (``pie_round_cpu.py`` imported
``mvg_rt.bench.e2e`` for months after it went). Each script imports what it uses at module level, so
loading it here is the check.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _load(path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    name = f"benchmarks_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # a dataclass in a script looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_scripts_are_found():
    assert len(SCRIPTS) >= 8, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.name)
def test_a_script_imports_and_answers_help(path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture):
    module = _load(path, monkeypatch)
    main = getattr(module, "main", None)
    if main is None:  # a helper module: importing it was the check
        return
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_gpu_check_passes_only_options_the_bench_has():
    """``gpu_check.sh`` runs on a GPU machine only: its ``mvg-rt bench`` line is parsed here (it passed
    ``--no-optimum`` long after that option went)."""
    import shlex

    from mvg_rt.cli import bench

    script = (SCRIPTS[0].parent / "gpu_check.sh").read_text().replace("\\\n", " ")
    line = next(line for line in script.splitlines() if "mvg-rt bench" in line and not line.startswith("#"))
    command = line.split("mvg-rt bench", 1)[1].split("2>&1")[0]
    command = command.replace('"${backend_flags[@]}"', "--backend torch").replace('"$out"', "out")
    bench.make_context("bench", shlex.split(command))  # an unknown option raises click.NoSuchOption
