"""Installed versions of the packages a result depends on, for provenance (run.json, manifests, reports)."""

from __future__ import annotations

import importlib.metadata as metadata
import platform

PACKAGES = ("mvg-rt", "torch", "diffusers", "transformers", "onnx", "onnxruntime", "onnxslim", "tensorrt")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's version and each installed package's; absent packages are left out."""
    out = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return out
