"""Every tolerance ``mvg-rt check`` applies, in one place.

Per component (deterministic inputs, each at two shapes):

* ``max_abs``: the largest absolute difference from the PyTorch FP32 reference may be
  at most ``max_abs * max(1, max|reference|)``: outputs are on different scales (VAE
  images ~1, UNet noise ~4, CLIP states up to ~30), and float32 rounding grows
  with magnitude. The max relative error is reported, not judged: it explodes where
  the reference is near zero.
* ``cosine``: the cosine similarity of the flattened outputs must reach this.

End to end (a short PIE run, and transition clips when SEINE is exported, on both
backends with the same seed): every state/frame must reach ``psnr_db`` and ``ssim``
against the PyTorch run.

What these limits were set against (the measured errors per precision, tiny and full-size models):
`benchmarks/results/cpu-2core/check_tolerances.md`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ComponentTolerance:
    max_abs: float  # relative to max(1, max|reference|)
    cosine: float


@dataclass(frozen=True)
class EndToEndTolerance:
    psnr_db: float
    ssim: float


COMPONENT = {
    "fp32": ComponentTolerance(max_abs=1e-4, cosine=0.99999),
    "fp16": ComponentTolerance(max_abs=3e-2, cosine=0.999),
    "int8": ComponentTolerance(max_abs=0.2, cosine=0.99),
}
END_TO_END = {
    "fp32": EndToEndTolerance(psnr_db=45.0, ssim=0.99),
    "fp16": EndToEndTolerance(psnr_db=30.0, ssim=0.95),
    "int8": EndToEndTolerance(psnr_db=25.0, ssim=0.9),
}


def describe() -> dict[str, dict[str, dict[str, float]]]:
    return {"component": {k: asdict(v) for k, v in COMPONENT.items()},
            "end_to_end": {k: asdict(v) for k, v in END_TO_END.items()}}
