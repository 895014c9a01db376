"""The ``check`` job: one engines folder against the PyTorch FP32 reference it was exported from.

The reference sources default to what the manifest recorded, and must fingerprint as
recorded (a different model folder is refused, not compared). Per component the
candidate and the reference run the same inputs (:mod:`mvg_rt.check.components`);
then a short PIE run and one transition clip run on both with one seed
(:mod:`mvg_rt.check.end_to_end`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvg_rt.artifacts.manifest import Manifest
from mvg_rt.check.components import ComponentResult, check_component
from mvg_rt.check.end_to_end import FrameResult, check_end_to_end
from mvg_rt.check.tolerances import describe
from mvg_rt.components import COMPONENTS, PIE_COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.models.provenance import check_source
from mvg_rt.runtime.factory import RuntimeSpec, open_runtime
from mvg_rt.runtime.pipelines.pie import PieSettings


@dataclass(frozen=True)
class CheckRequest:
    """What to check against what; sources left None come from the manifest."""

    engines_dir: Path
    backend: str = "ort"
    precision: str = "fp32"
    device: str = "cpu"
    model_dir: Path | None = None
    unet_dir: Path | None = None
    seine: Path | None = None
    rounds: int = 2
    steps: int = 6
    seed: int = 0
    end_to_end: bool = True

    @property
    def kind(self) -> str:
        """The artifact kind the backend runs."""
        return "trt" if self.backend == "trt" else "onnx"


@dataclass
class CheckResult:
    request: CheckRequest
    components: list[ComponentResult]
    frames: list[FrameResult]
    skipped_outside_profile: list[str]
    reference: dict[str, str | None]
    pie_ready: bool
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        finite = lambda v: v if not isinstance(v, float) or math.isfinite(v) else ("inf" if v > 0 else "-inf")  # noqa: E731
        r = self.request
        return {
            "engines": str(r.engines_dir), "backend": r.backend, "precision": r.precision, "device": r.device,
            "skipped_outside_profile": self.skipped_outside_profile,
            "reference": self.reference,
            "tolerances": describe(),
            "components": [{k: finite(v) for k, v in c.to_dict().items()} for c in self.components],
            "end_to_end": [{k: finite(v) for k, v in f.to_dict().items()} for f in self.frames],
            "seconds": round(self.seconds, 2),
            "failed": self.failed,
            "passed": self.passed,
        }


def _recorded(option: str, given: Path | None, recorded: str | None, needed: bool) -> str | None:
    """The path to use for a reference source: the option, else what the manifest recorded, if it still exists."""
    if given:
        return str(given)
    if not needed:
        return None
    if recorded and Path(recorded).exists():
        return recorded
    where = f" (the manifest records {recorded}, which no longer exists)" if recorded else ""
    raise MvgError(f"check needs the PyTorch source the engines came from: pass {option}{where}")


def reference_sources(manifest: Manifest, request: CheckRequest) -> tuple[str, str | None, str | None]:
    source, precision = manifest.source, request.precision
    model_dir = _recorded("--model-dir", request.model_dir, source.model_dir, True)
    unet_dir = _recorded("--unet", request.unet_dir, source.unet_dir, source.unet_sha256 is not None)
    has_seine = manifest.find("seine", "onnx", precision) is not None or manifest.find("seine", "trt", precision)
    seine = _recorded("--seine", request.seine, source.seine, bool(has_seine))
    check_source(manifest, model_dir, unet_dir, seine)
    return model_dir, unet_dir, seine


def run_check(request: CheckRequest) -> CheckResult:
    """Compare every component the folder has, then (unless asked not to) a short end-to-end run."""
    manifest = Manifest.read(request.engines_dir)
    # int8: the quantized components only (the others run their fp32/fp16 artifacts: check those at that precision)
    exact = request.precision == "int8"
    components = [c for c in COMPONENTS if manifest.find(c, request.kind, request.precision, exact=exact)]
    if not components and exact:
        raise MvgError(f"engines folder {request.engines_dir} has no int8 {request.kind} artifacts: "
                       + ("re-export it with --int8" if request.kind == "onnx" else
                          "build them with mvg-rt build --precision int8"))
    if not components:
        manifest.require("unet", request.kind, request.precision)  # raises with what the folder has
    model_dir, unet_dir, seine_path = reference_sources(manifest, request)
    candidate_spec = RuntimeSpec(backend=request.backend, device=request.device, precision=request.precision,
                                 engines_dir=request.engines_dir)
    reference_spec = RuntimeSpec(model_dir=model_dir, unet_dir=unet_dir, seine=seine_path,
                                 seine_config=manifest.model.seine_config, with_seine=seine_path is not None)
    started = time.perf_counter()
    with open_runtime(candidate_spec) as candidate, open_runtime(reference_spec) as reference:
        component_results, skipped = [], []
        for name in components:
            results, outside = check_component(name, manifest, candidate.model.tokenizer, reference.backend,
                                               candidate.backend, request.precision, request.kind)
            component_results += results
            skipped += outside
        pie_ready = all(manifest.find(c, request.kind, request.precision) for c in PIE_COMPONENTS)
        frames = []
        if request.end_to_end and pie_ready:
            settings = PieSettings(rounds=request.rounds, steps=request.steps, strength=0.6)
            frames = check_end_to_end(reference, candidate, manifest.model.resolution, settings, request.seed,
                                      request.precision)
    result = CheckResult(request, component_results, frames, skipped,
                         {"model_dir": model_dir, "unet": unet_dir, "seine": seine_path}, pie_ready,
                         time.perf_counter() - started)
    failed_components = sorted({r.component for r in component_results if not r.passed})
    failed_stages = sorted({r.stage for r in frames if not r.passed})
    result.failed = failed_components + [f"end-to-end {s}" for s in failed_stages]
    return result
