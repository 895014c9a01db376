"""``mvg-rt simulate`` end to end on a tiny model, the embedded default, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


FAST = ["--rounds", "2", "--steps", "4", "--strength", "0.5", "--frames", "3", "--transition-steps", "2"]


@pytest.fixture
def xray(tmp_path: Path, image_64: np.ndarray) -> Path:
    path = tmp_path / "xray.png"
    Image.fromarray(np.kron(image_64[..., 0], np.ones((2, 3), np.uint8))).save(path)  # 128x192 grey
    return path


def test_simulate_writes_every_output(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt",
                            "severe cardiomegaly", "--roi-ellipse", "96,64,40,30", "--feather", "6",
                            "--out", str(out), *FAST])
    assert code == 0, err
    assert sorted(p.name for p in (out / "states").iterdir()) == ["state_00.png", "state_01.png", "state_02.png"]
    assert Image.open(out / "mask.png").size == (64, 64)
    assert Image.open(out / "progression.gif").n_frames == 2 * (3 - 1) + 1  # two clips of 3 frames
    record = json.loads((out / "run.json").read_text())
    assert record["pie"]["rounds"] == 2 and record["seed"] == 0
    assert record["model"]["model_dir_sha256"] and record["versions"]["torch"]
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    assert {"inside_roi", "outside_roi"} <= set(record["rounds"][0]["change"])
    assert "path" not in record["input"] and str(xray) not in (out / "run.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_existing_results_are_kept_unless_overwrite(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    from mvg_rt.io.output_dir import mark_output

    out = tmp_path / "run"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    args = ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "x", "--out", str(out),
            "--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition"]
    code, _, err = run_cli([*args, "--overwrite"])  # not an mvg-rt output (no marker): never replaced
    assert code == 2 and "holds files mvg-rt did not write" in err
    mark_output(out, "run")  # an earlier run's folder
    code, _, err = run_cli(args)
    assert code == 2 and "already holds results" in err
    assert (out / "earlier.txt").read_text() == "keep me"
    code, _, err = run_cli([*args, "--overwrite"])
    assert code == 0, err
    assert not (out / "earlier.txt").exists() and (out / "run.json").exists()


def _bad_inputs(tmp_path: Path, tiny_model_dir: Path, xray: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    Image.fromarray(np.full((10, 40), 255, np.uint8)).save(tmp_path / "wide_mask.png")
    Image.fromarray(np.zeros((128, 192), np.uint8)).save(tmp_path / "zero_mask.png")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(tiny_model_dir, incomplete)
    shutil.rmtree(incomplete / "vae")
    base = ["--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "p"]
    return {
        "missing file": (["--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "nope.png"), "--prompt", "p"],
                         "not found"),
        "unreadable image": (["--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "junk.png"), "--prompt",
                              "p"], "cannot read image"),
        "mask aspect ratio": ([*base, "--mask", str(tmp_path / "wide_mask.png")], "aspect ratio"),
        "mask all zero": ([*base, "--mask", str(tmp_path / "zero_mask.png")], "empty"),
        "strength": ([*base, "--strength", "1.5"], "--strength"),
        "strength zero": ([*base, "--strength", "0"], "--strength"),
        "rounds": ([*base, "--rounds", "0"], "--rounds"),
        "resolution": ([*base, "--resolution", "60"], "multiple of 8"),
        "incomplete model": (["--model-dir", str(incomplete), "--image", str(xray), "--prompt", "p"], "vae"),
        "unet without model": (["--unet", str(tiny_model_dir / "unet"), "--image", str(xray), "--prompt", "p"],
                               "--unet needs --model-dir"),
    }


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, tiny_model_dir: Path, xray: Path, run_cli):
    for name, (args, words) in _bad_inputs(tmp_path, tiny_model_dir, xray).items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        code, _, err = run_cli(["simulate", *args, "--out", str(out)])
        assert code == 2, (name, err)
        assert words in err, (name, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert not out.exists(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_default_demo_runs_with_no_model_argument(tmp_path: Path, run_cli):
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["simulate", "--out", str(out), "--rounds", "1", "--steps", "4", "--frames", "3",
                                   "--transition-steps", "2"])
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["prompt"] == "severe cardiomegaly" and record["roi"]["source"] == "mask file"
    assert record["notice"]  # the default says what its outputs are (and are not)
    # issue 13: the demo says which of its settings replace the paper's defaults, and records them
    assert "demo settings apply: strength 0.3, DDIM transition sampler, at 128 px" in err
    assert record["demo_settings"] == {"strength": 0.3, "transition_sampler": "ddim", "resolution": 128}
    code, stdout, err = run_cli(["eval", "--run", str(out)])
    assert code == 0, err
    assert "monotonically" not in stdout and ("CTR " in stdout)


def test_console_script_reports_errors_without_traceback(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "mvg_rt.cli", "simulate", "--image", str(tmp_path / "none.png"),
                           "--prompt", "p", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("mvg-rt: error:") and "Traceback" not in proc.stderr
