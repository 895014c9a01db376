"""The transition standard: ideal phantom sweeps pass it, a flash, a hold-then-jump and a shuffle fail it,
naming the criteria; every clip of a run is judged by ``mvg-rt eval`` and recorded by ``mvg-rt simulate``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.demo.phantom import DiseaseState, PatientAnatomy, progression_clip, render_phantom
from mvg_rt.errors import MvgError
from mvg_rt.eval.transition_quality import (NO_TRANSITIONS, PSNR_CAP, _ctr_criterion, transition_quality,
                                            transitions_report)
from mvg_rt.runtime.pipelines.roi import composite_transition

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FRAMES = 8
START, END = DiseaseState(cardiomegaly=0.3), DiseaseState(cardiomegaly=0.6)  # about one demo PIE round: CTR +0.06


@pytest.fixture(scope="module")
def anatomy() -> PatientAnatomy:
    return PatientAnatomy.sample(np.random.default_rng(3))


@pytest.fixture(scope="module")
def roi(anatomy: PatientAnatomy) -> np.ndarray:
    return render_phantom(anatomy, START).heart_roi.astype(np.float64)


def eq10(sweep: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """A grey phantom sweep (K, H, W) as the pipeline composites a clip: RGB, the endpoints' mean outside the ROI."""
    rgb = torch.from_numpy(np.repeat(sweep[..., None], 3, axis=-1)).double()
    return composite_transition(rgb, rgb[0], rgb[-1], torch.from_numpy(roi)).round().clamp(0, 255).byte().numpy()


def flashed(clip: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """The demo's failure: every generated frame a bright blob filling the ROI."""
    out = clip.copy()
    weight = roi[..., None]
    out[1:-1] = np.round(weight * 235 + (1 - weight) * clip[1:-1]).astype(np.uint8)
    return out


@pytest.fixture(scope="module", params=[None, 123], ids=["sweep", "re-textured sweep"])
def ideal_clip(request: pytest.FixtureRequest, anatomy: PatientAnatomy, roi: np.ndarray) -> np.ndarray:
    return eq10(progression_clip(anatomy, START, END, FRAMES, end_texture_seed=request.param), roi)


def test_an_ideal_sweep_passes_the_standard(ideal_clip: np.ndarray, roi: np.ndarray):
    q = transition_quality(ideal_clip, roi, ideal_clip[0], ideal_clip[-1])
    assert q.passed and q.failures == [], q.failures
    assert q.frames == FRAMES and None not in q.ctr and q.ctr[-1] > q.ctr[0] + 0.05  # the heart grows
    assert q.roi_mean_excursion == 0.0 and q.path_ratio < 2.0 and q.jerkiness < 1.5
    assert q.ctr_monotone is True and q.ctr_excursion == 0.0 and q.ctr_backstep == 0.0
    assert q.outside_psnr_min > 45 and q.outside_ssim_min > 0.99
    assert q.ctr_monotone_fraction == 1.0 and q.ctr_max_deviation < 0.03  # against the line between the states


def test_a_flash_fails_on_the_excursion_and_the_path(ideal_clip: np.ndarray, roi: np.ndarray):
    q = transition_quality(flashed(ideal_clip, roi), roi, ideal_clip[0], ideal_clip[-1])
    assert not q.passed and q.roi_mean_excursion > 30 and q.path_ratio > 4
    excursion, path = q.failures[:2]
    assert excursion.startswith(f"ROI mean leaves the endpoints' range by {q.roi_mean_excursion:.0f} grey levels")
    assert path == f"path ratio {q.path_ratio:.2f} > 2"
    assert q.ctr_monotone is False and any(f.startswith("heart size not monotone") for f in q.failures)


def test_a_hold_then_jump_fails_on_spikes_only(ideal_clip: np.ndarray, roi: np.ndarray):
    clip = np.stack([ideal_clip[0]] * (FRAMES - 1) + [ideal_clip[-1]])
    q = transition_quality(clip, roi, ideal_clip[0], ideal_clip[-1])
    assert q.jerkiness == pytest.approx(FRAMES - 1)  # all the change in one of the K - 1 steps
    assert q.failures == [f"jerkiness {FRAMES - 1:.2f} > 3 (a spike)"]


def test_a_shuffled_clip_fails_and_scores_worse(ideal_clip: np.ndarray, roi: np.ndarray):
    good = transition_quality(ideal_clip, roi, ideal_clip[0], ideal_clip[-1])
    bad = transition_quality(ideal_clip[[0, 5, 2, 6, 1, 4, 3, 7]], roi, ideal_clip[0], ideal_clip[-1])
    assert bad.path_ratio > 2 > good.path_ratio and bad.ctr_monotone is False
    assert [f.split(" ")[0] for f in bad.failures] == ["path", "heart"]
    assert bad.ctr_monotone_fraction < good.ctr_monotone_fraction and bad.ctr_max_deviation > good.ctr_max_deviation


def test_the_heart_size_criterion():
    assert _ctr_criterion([0.5, 0.52, 0.51, 0.55])[2] is True  # a dip within the readout's 0.01
    assert _ctr_criterion([0.55, 0.53, 0.54, 0.5])[2] is True  # shrinking counts the other way
    backwards = _ctr_criterion([0.5, 0.53, 0.51, 0.55])
    assert backwards[1] == pytest.approx(0.02) and "steps back by 0.020" in backwards[3]
    beyond = _ctr_criterion([0.5, 0.57, 0.55])
    assert beyond[0] == pytest.approx(0.02) and "CTR leaves the endpoints' 0.500-0.550 by 0.020" in beyond[3]
    assert _ctr_criterion([0.5, None, 0.55])[2:] == (False, "heart size unknown: CTR not measured on 1 of 3 frames")
    assert _ctr_criterion([None, 0.5, None]) == (None, None, None, None)  # no endpoint read: does not apply


def test_a_crossfade_is_even_and_direct():
    rng = np.random.default_rng(0)
    start, end = rng.integers(0, 256, (2, 32, 32)).astype(np.float64)
    roi = np.zeros((32, 32))
    roi[8:24, 8:24] = 1
    t = np.linspace(0, 1, FRAMES)[:, None, None]
    frames = np.round(roi * ((1 - t) * start + t * end) + (1 - roi) * (start + end) / 2).astype(np.uint8)
    q = transition_quality(frames, (roi * 255).astype(np.uint8), start.astype(np.uint8), end.astype(np.uint8))
    assert q.passed and q.ctr_monotone is None  # not chest X-rays: the heart size does not apply
    assert q.ctr_monotone_fraction is None and q.ctr_max_deviation is None
    assert q.jerkiness == pytest.approx(1.0, abs=0.05) and q.path_ratio == pytest.approx(1.0, abs=0.01)
    assert q.outside_psnr_min > 50  # the endpoints' mean up to rounding


def test_bad_inputs_are_one_line_errors():
    frames = np.zeros((4, 32, 32), np.uint8)
    state = np.zeros((32, 32), np.uint8)
    roi = np.zeros((32, 32))
    roi[:8] = 1
    cases = [(frames[:2], roi, state, state), (frames.astype(np.float32), roi, state, state),
             (frames, roi, np.zeros((16, 16), np.uint8), state), (frames, roi[:8], state, state),
             (frames, np.zeros((32, 32)), state, state), (frames, roi * 2, state, state)]
    for args in cases:
        with pytest.raises(MvgError):
            transition_quality(*args)


@torch.no_grad()
def test_scores_a_tiny_model_clip(tiny_runtime, image_64):
    from mvg_rt.runtime.pipelines.transition import TransitionSampler, TransitionSettings

    start = torch.from_numpy(image_64)
    end = start.flip(1).contiguous()
    roi = torch.zeros(64, 64)
    roi[16:48, 16:48] = 1
    sampler = TransitionSampler(tiny_runtime.backend, tiny_runtime.model,
                                TransitionSettings(frames=4, steps=3, sampler="dpm++2m"), "p")
    clip = sampler.clip(start, end, roi, torch.Generator().manual_seed(0)).numpy()
    q = transition_quality(clip, roi.numpy(), start.numpy(), end.numpy())
    assert q.frames == 4 and q.change_mean > 0 and q.jerkiness >= 1.0 and q.path_ratio >= 0
    assert PSNR_CAP >= q.outside_psnr_min > 50  # Eq 10 with a hard ROI: outside is the endpoints' mean, rounded
    assert set(q.to_dict()) >= {"ctr", "ctr_monotone_fraction", "jerkiness", "path_ratio", "outside_ssim_min",
                                "roi_mean_excursion", "ctr_monotone", "failures", "passed"}


# ---- every clip of a run -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def joined(anatomy: PatientAnatomy, roi: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two clips of one sweep as simulate joins them (the shared frame once); the second one flashes."""
    sweep = progression_clip(anatomy, START, END, 2 * FRAMES - 1)
    first, second = eq10(sweep[:FRAMES], roi), flashed(eq10(sweep[FRAMES - 1:], roi), roi)
    states = [np.repeat(sweep[k][..., None], 3, axis=-1) for k in (0, FRAMES - 1, 2 * FRAMES - 2)]
    return [*first, *second[1:]], states


def test_a_run_is_split_into_its_clips(joined, roi: np.ndarray):
    frames, states = joined
    report = transitions_report(frames, states, roi, FRAMES)
    assert [clip["frame_range"] for clip in report["clips"]] == [[0, 7], [7, 14]]
    assert [clip["passed"] for clip in report["clips"]] == [True, False] and report["passing"] == 1
    assert report["summary"].startswith("1 of 2 clips are transitions; clip 2 fails: ROI mean leaves the endpoints'")
    with pytest.raises(MvgError, match="14 video frames for 2 clips of 8 frames: expected 15"):
        transitions_report(frames[:-1], states, roi, FRAMES)
    assert transitions_report([], states, roi, None) == {"clip_frames": None, "clips": [], "passing": 0,
                                                         "summary": NO_TRANSITIONS}


def _run_folder(folder: Path, frames: list[np.ndarray], states: list[np.ndarray], roi: np.ndarray,
                clip_frames: int | None) -> Path:
    """What eval reads of a run folder simulate writes: run.json, states/, mask.png and frames/."""
    (folder / "states").mkdir(parents=True)
    for index, state in enumerate(states):
        Image.fromarray(state).save(folder / "states" / f"state_{index:02d}.png")
    Image.fromarray(np.round(roi * 255).astype(np.uint8)).save(folder / "mask.png")
    if clip_frames is not None:
        (folder / "frames").mkdir()
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / "frames" / f"frame_{index:04d}.png")
    transition = None if clip_frames is None else {"frames": clip_frames}
    record = {"mvg_rt_run": 1, "pie": {"rounds": len(states) - 1}, "transition": transition}
    (folder / "run.json").write_text(json.dumps(record))
    return folder


def test_eval_reports_the_standard_for_every_clip(joined, roi: np.ndarray, tmp_path: Path, run_cli,
                                                  monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table's headers on one line each
    frames, states = joined
    run = _run_folder(tmp_path / "run", frames, states, roi, FRAMES)
    code, out, err = run_cli(["eval", "--run", str(run), "--json", str(tmp_path / "report.json")])
    assert code == 0, err
    for words in ("transition clips", "ROI-mean excursion", "path ratio", "CTR monotone", "outside PSNR", "FAIL",
                  "1 of 2 clips are transitions\n", "clip 2 fails: ROI mean leaves the endpoints' range by"):
        assert words in out, (words, out)
    section = json.loads((tmp_path / "report.json").read_text())["transitions"]
    assert section["passing"] == 1 and section["clip_frames"] == FRAMES
    assert section["clips"][1]["failures"][1].startswith("path ratio ")


def test_eval_draws_one_clip_as_a_strip(joined, roi: np.ndarray, tmp_path: Path, run_cli):
    frames, states = joined
    run = _run_folder(tmp_path / "run", frames, states, roi, FRAMES)
    code, out, err = run_cli(["eval", "--run", str(run), "--strip", str(tmp_path / "strip.png"), "--clip", "2"])
    assert code == 0 and f"wrote {tmp_path / 'strip.png'}" in out, err
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    assert strip.shape[1] > 4 * strip.shape[0]  # the clip's 8 frames side by side
    for clip, problem in (("3", "--clip 3: run .* has clips 1 to 2"), ("0", "--clip must be")):
        code, _, err = run_cli(["eval", "--run", str(run), "--strip", str(tmp_path / "other.png"), "--clip", clip])
        assert code == 2 and err.count("\n") == 1 and not (tmp_path / "other.png").exists(), err
        assert re.search(problem, err), err
    no_clips = _run_folder(tmp_path / "states-only", [], states, roi, None)
    code, _, err = run_cli(["eval", "--run", str(no_clips), "--strip", str(tmp_path / "other.png")])
    assert code == 2 and "has no transition clips" in err, err


def test_eval_of_a_run_without_transitions_says_so(joined, roi: np.ndarray, tmp_path: Path, run_cli):
    _, states = joined
    run = _run_folder(tmp_path / "run", [], states, roi, None)
    code, out, err = run_cli(["eval", "--run", str(run)])
    assert code == 0 and NO_TRANSITIONS in out and "ROI-mean excursion" not in out, err


def test_eval_of_a_run_missing_a_frame_is_one_line(joined, roi: np.ndarray, tmp_path: Path, run_cli):
    frames, states = joined
    run = _run_folder(tmp_path / "run", frames, states, roi, FRAMES)
    (run / "frames" / "frame_0014.png").unlink()
    code, _, err = run_cli(["eval", "--run", str(run)])
    assert code == 2 and err.count("\n") == 1 and "frames/ holds 14 frames, run.json records 2 transition clips " \
        "of 8 frames (15 frames); rerun mvg-rt simulate" in err, err


def test_simulate_records_the_verdicts_and_warns(tiny_model_dir: Path, xray: Path, tmp_path: Path, run_cli):
    """A tiny random model makes noise: what matters here is where the verdicts go, not what they are."""
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "p",
                            "--rounds", "2", "--steps", "2", "--strength", "0.5", "--resolution", "64", "--frames",
                            "3", "--transition-steps", "1", "--roi-box", "16,16,48,48", "--out", str(out)])
    assert code == 0, err
    section = json.loads((out / "run.json").read_text())["eval"]["transitions"]
    assert section["clip_frames"] == 3 and [clip["frame_range"] for clip in section["clips"]] == [[0, 2], [2, 4]]
    failing = 2 - section["passing"]
    warning = (f"warning: {failing} of 2 transition clips fail the transition standard (no steady progression "
               f"between their states): see mvg-rt eval --run {out}")
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == ([warning] if failing else [])
    code, stdout, err = run_cli(["eval", "--run", str(out)])
    assert code == 0 and f"{section['passing']} of 2 clips are transitions" in stdout, err
