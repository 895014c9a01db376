"""The bundled demo case: an unseen phantom patient with a normal heart, and its heart ROI.

Regenerate with ``python -m mvg_rt.demo.case`` (deterministic). The patient comes
from its own random stream (seed 20241127), so the demo model, trained on streams
seeded from 0, has never seen it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mvg_rt.demo.phantom import DiseaseState, PatientAnatomy, render_phantom
from mvg_rt.io.images import save_png

CASE_SEED = 20241127
CASE_SIZE = 256


def render_case(seed: int = CASE_SEED, size: int = CASE_SIZE):
    anatomy = PatientAnatomy.sample(np.random.default_rng(seed))
    return render_phantom(anatomy, DiseaseState(cardiomegaly=0.0), size)


def write_case(out_dir: Path) -> float:
    """Write demo_cxr.png and demo_heart_roi.png; returns the case's true CTR."""
    phantom = render_case()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_png(phantom.image, out_dir / "demo_cxr.png")
    save_png((np.clip(phantom.heart_roi, 0, 1) * 255).round().astype(np.uint8), out_dir / "demo_heart_roi.png")
    return phantom.ctr


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "assets"
    print(f"wrote the demo case to {target} (true CTR {write_case(target):.3f})")
