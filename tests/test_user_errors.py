"""Every error a user or the machine can cause is one line and exit 2 (issue 13, defects 4, 5 and 8).

Each test names the defect it covers; each failed on the code before issue 13.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvg_rt.eval.progression import ctr_course
from mvg_rt.io.jsonio import finite_json

REPO = Path(__file__).resolve().parents[1]
FAST = ["--prompt", "p", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32",
        "--no-transition"]


def _strict_json(text: str) -> object:
    def refuse(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


STAGE_LINE = re.compile(r"^mvg-rt: (PIE round|transition clip) \d+/\d+ done \(")


def _problem_lines(err: str) -> list[str]:
    """stderr without the progress lines a run prints (off a terminal) before it fails."""
    return [line for line in err.splitlines() if not STAGE_LINE.match(line)]


def _one_line_exit_2(code: int, err: str) -> None:
    assert code == 2, err
    lines = _problem_lines(err)
    assert len(lines) == 1 and lines[0].startswith("mvg-rt: error: ") and "Traceback" not in err, err


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture
def base(tiny_model_dir: Path, xray: Path) -> list[str]:
    return ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray)]


# defect 4 (non-finite numbers) and defect 5 (huge seed, --resolution 8 with a mask, --device tpu)
BAD_NUMBERS = [
    (["--guidance", "nan"], "--guidance must be a finite number in [0, 100]"),
    (["--feather", "nan"], "--feather must be a finite number in [0, 10000]"),
    (["--fps", "nan"], "--fps must be a finite number in [0.002, 50]"),
    (["--fps", "inf"], "--fps must be"),
    (["--strength", "inf"], "--strength must be a finite number in (0, 1]"),
    (["--beta1", "nan"], "--beta1 must be"),
    (["--transition-guidance", "-inf"], "--transition-guidance must be"),
    (["--roi-box", "nan,0,10,10"], "--roi-box must be a finite number"),
    (["--roi-ellipse", "10,10,inf,5"], "--roi-ellipse must be a finite number"),
    (["--seed", "1180591620717411303424"], "--seed must be an integer in [0, 9223372036854775807]"),
    (["--seed", "-1"], "--seed must be an integer in [0,"),
    (["--rounds", "2.5"], "--rounds takes an integer"),
    (["--resolution", "8", "--roi-box", "0,0,20,20"], "--resolution must be an integer in [32, 4096]"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    # in range, but past the model's scheduler (PNDM, steps_offset 1): was an IndexError mid-round
    (["--steps", "1000"], "--steps 1000 is more than this model's PNDMScheduler can take"),
]


@pytest.mark.parametrize(("extra", "words"), BAD_NUMBERS, ids=[" ".join(e) for e, _ in BAD_NUMBERS])
def test_numeric_options_are_finite_and_in_range(tmp_path: Path, base: list[str], run_cli, extra, words):
    out = tmp_path / "out"
    code, _, err = run_cli([*base, *FAST, *extra, "--out", str(out)])
    _one_line_exit_2(code, err)
    assert words in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_run_json_never_holds_nan(tmp_path: Path, base: list[str], run_cli):
    assert _strict_json(finite_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}
    code, _, err = run_cli([*base, *FAST, "--out", str(tmp_path / "run")])
    assert code == 0, err
    _strict_json((tmp_path / "run" / "run.json").read_text())


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, base: list[str], run_cli, monkeypatch):
    """defect 5: OSError ENOSPC while writing (a real full disk cannot be made in a test without root)."""
    import mvg_rt.simulation as simulation

    def full(_frames, path, _fps):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(simulation, "write_gif", full)
    code, _, err = run_cli([*base, *FAST, "--out", str(tmp_path / "out")])
    _one_line_exit_2(code, err)
    assert "no space left on the device" in err
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_real_bug_exits_1_with_where_to_report(tmp_path: Path, base: list[str], run_cli, monkeypatch):
    import mvg_rt.simulation as simulation

    def bug(*_args):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(simulation, "write_gif", bug)
    code, _, err = run_cli([*base, *FAST, "--out", str(tmp_path / "out")])
    assert code == 1 and len(_problem_lines(err)) == 1, err
    assert "internal error" in err and "rerun with --debug" in err and "report it" in err


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares a huge size (a decompression bomb) without the memory to build one."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(20000, 10000), (12000, 8000)], ids=["bomb-error", "bomb-warning"])
def test_decompression_bombs_are_refused_in_one_line(tmp_path: Path, tiny_model_dir: Path, run_cli, size):
    image = _png_header_only(tmp_path / "big.png", *size)
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(image), *FAST,
                            "--out", str(tmp_path / "out")])
    _one_line_exit_2(code, err)
    assert "safety limit" in err and "Warning" not in err


def test_usage_errors_are_one_line(run_cli):
    for args in (["simulate", "--rounds"], ["simulate", "--bogus"], ["simulate", "--backend", "foo"], ["nope"]):
        code, _, err = run_cli(args)
        assert code == 2 and err.count("\n") == 1 and "--help" in err, (args, err)


# defect 8: rough edges


def test_a_missing_mask_is_named_as_the_mask(tmp_path: Path, base: list[str], run_cli):
    code, _, err = run_cli([*base, *FAST, "--mask", str(tmp_path / "roi.png"), "--out", str(tmp_path / "o")])
    _one_line_exit_2(code, err)
    assert "--mask file" in err and "input image" not in err


def test_a_model_without_seine_advises_seine_or_no_transition(tmp_path: Path, tiny_model_dir: Path, xray: Path,
                                                              run_cli):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("seine"))
    args = [a for a in FAST if a != "--no-transition"]
    code, _, err = run_cli(["simulate", "--model-dir", str(model), "--image", str(xray), *args, "--frames", "3",
                            "--out", str(tmp_path / "o")])
    _one_line_exit_2(code, err)
    assert "--seine" in err and "--no-transition" in err


def test_a_compressed_dicom_names_the_missing_decoders_whole(tmp_path: Path, tiny_model_dir: Path, run_cli):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = JPEGLSLossless
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 16, 12, 11
    ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = 0, 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 100])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "jls.dcm", enforce_file_format=True)
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "jls.dcm"),
                            *FAST, "--out", str(tmp_path / "o")])
    if code == 0:
        pytest.skip("a JPEG-LS decoder is installed here")
    _one_line_exit_2(code, err)
    assert "dependencies:;" not in err and "pylibjpeg" in err


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_unsafe_pickle_is_refused_and_warnings_stay_quiet(tmp_path: Path, tiny_model_dir: Path):
    """A pickle that would run code is refused as unsafe (not "corrupt"); neither torch's pickle-protocol
    warning nor Pillow's palette warning reaches stderr (a real process: pytest captures warnings)."""
    import torch

    evil = tmp_path / "seine.pt"
    torch.save(_Payload(str(tmp_path / "PWNED")), evil)
    palette = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), np.uint8)).convert("P")
    palette.info["transparency"] = b"\x00" * 16  # Pillow warns when converting this palette image
    palette.save(tmp_path / "palette.png", transparency=b"\x00" * 16)
    proc = subprocess.run([sys.executable, "-m", "mvg_rt.cli", "simulate", "--model-dir", str(tiny_model_dir),
                           "--seine", str(evil), "--image", str(tmp_path / "palette.png"), "--prompt", "p",
                           "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32", "--frames", "3",
                           "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    _one_line_exit_2(proc.returncode, proc.stderr)
    assert "refused as unsafe" in proc.stderr and "corrupt" not in proc.stderr
    assert not (tmp_path / "PWNED").exists()


def test_non_utf8_prompt_is_one_line(tmp_path: Path, tiny_model_dir: Path, xray: Path):
    proc = subprocess.run([sys.executable, "-m", "mvg_rt.cli", "simulate", "--model-dir", str(tiny_model_dir),
                           "--image", str(xray), "--prompt", b"caf\xe9 \xff", "--out", str(tmp_path / "o")],
                          capture_output=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C.UTF-8"})
    err = proc.stderr.decode()
    _one_line_exit_2(proc.returncode, err)
    assert "--prompt is not valid UTF-8" in err


def test_a_long_prompt_is_noted_once_and_recorded(tmp_path: Path, base: list[str], run_cli):
    prompt = " ".join(["severe cardiomegaly with pleural effusion"] * 20)
    code, _, err = run_cli([*base, *FAST, "--prompt", prompt, "--out", str(tmp_path / "run")])
    assert code == 0, err
    assert err.count("tokens long but the text encoder reads 77") == 1
    record = _strict_json((tmp_path / "run" / "run.json").read_text())
    assert record["prompt"] == prompt  # all of it, as given
    assert record["prompt_truncated"]["limit"] == 77 and record["prompt_truncated"]["tokens"] > 77
    assert prompt.startswith(record["prompt_truncated"]["kept"][:30])


def test_a_1x1_image_is_refused(tmp_path: Path, tiny_model_dir: Path, run_cli):
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(tmp_path / "dot.png")
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(tmp_path / "dot.png"),
                            *FAST, "--out", str(tmp_path / "o")])
    _one_line_exit_2(code, err)
    assert "only 1x1 pixels" in err


def test_stage_lines_are_printed_when_stderr_is_not_a_terminal(tmp_path: Path, base: list[str], run_cli):
    code, _, err = run_cli([*base, *FAST, "--rounds", "2", "--out", str(tmp_path / "run")])
    assert code == 0, err
    assert "PIE round 1/2 done" in err and "PIE round 2/2 done" in err


def test_ctr_course_reads_as_the_demo_promises():
    demo = [0.42, 0.47, 0.52, 0.56, 0.60, 0.63, 0.62, 0.66, 0.64, 0.65, 0.63]  # an earlier demo run: a wobbly plateau
    course = ctr_course(demo)
    assert course["rise_then_plateau"] and course["crosses_limit_at_round"] == 2
    assert course["summary"].startswith("CTR rises from 0.42 (normal, below 0.5)")
    assert "then holds at 0.62-0.66" in course["summary"] and "monoton" not in course["summary"]
    flat = ctr_course([0.42, 0.43, 0.41, 0.42])
    assert not flat["rise_then_plateau"] and "never reaches 0.5" in flat["summary"]


def test_every_numeric_option_has_one_range_and_its_default_is_inside():
    """The one validation layer covers every numeric option of every verb (a new option without a range fails)."""
    import click

    from mvg_rt.cli import cli
    from mvg_rt.cli_types import Number
    from mvg_rt.limits import LIMITS

    checked = 0
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param.type, (click.types.IntParamType, click.types.FloatParamType)):
                raise AssertionError(f"{name} {param.opts}: plain click int/float, not mvg_rt.cli_types")
            if isinstance(param.type, Number):
                key = param.type.key or max(param.opts, key=len)
                assert key in LIMITS, (name, key)
                default = param.get_default(click.Context(command))  # a settings field's default (cli_types.default_of)
                defaults = default if isinstance(default, (list, tuple)) else [default]
                for default in defaults:
                    if isinstance(default, (int, float)):  # click's UNSET / None: no default
                        param.type.convert(default, param, None)
                checked += 1
    assert checked >= 35


@pytest.mark.parametrize(("value", "shown"), [("1" + "0" * 400, "10000000000000000000... (401 characters)"),
                                             ("-" + "9" * 60, "-9999999999999999999... (61 characters)")])
def test_an_integer_of_hundreds_of_digits_is_one_line(run_cli, value: str, shown: str):
    """``math.isfinite`` of a 400-digit int overflows: that was an internal error before the range check."""
    code, _, err = run_cli(["simulate", "--seed", value, "--out", "never"])
    assert code == 2 and err.count("\n") == 1, err
    assert f"--seed must be an integer in [0, 9223372036854775807] (got {shown})" in err, err


def test_first_line_quotes_one_line_of_a_long_library_message():
    from mvg_rt.errors import first_line

    assert first_line(RuntimeError("  shape mismatch\n  at node 3\n")) == "shape mismatch"
    assert first_line(ValueError("x" * 500), 160) == "x" * 160
    assert first_line(KeyError()) == "KeyError"  # says nothing: its type
