"""Issue 18: no internal error on a damaged run, a full disk or a closed pipe (eval, check, every writer).

One real tiny run is made once for the module and copied per case. Every failure must be one line,
exit 2, with every file that was there before intact byte for byte and no new 0-byte file. The
generated part (hypothesis) damages the run's files at random: profiles as tests/test_fuzz_cli.py
(``MVG_FUZZ_PROFILE=ci``: 200 cases, ``long``: ten times as many).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzzing import SCALE, run_main

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "seine")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """2 rounds of 2 steps at 32 px with one 3-frame 1-step clip per round: every file eval reads."""
    out = tmp_path_factory.mktemp("damaged") / "run"
    code, _, err = run_main(["simulate", "--model-dir", str(tiny_model_dir), "--prompt", "effusion", "--rounds", "2",
                        "--steps", "2", "--strength", "0.5", "--resolution", "32", "--frames", "3",
                        "--transition-steps", "1", "--roi-box", "4,4,20,20", "--out", str(out)])
    assert code == 0, err
    return out


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_one_line_exit_2(code: int, err: str, *words: str, progress: tuple[str, ...] | None = None) -> None:
    """Exit 2 and one problem line naming ``words``; ``progress`` (a line prefix) marks lines a run prints."""
    lines = [line for line in err.strip().splitlines() if progress is None or not line.startswith(progress)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mvg-rt: error: "), (code, err)
    assert "internal error" not in err and "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, err)


def assert_untouched(before: dict[Path, bytes], root: Path) -> None:
    after = snapshot(root)
    for path, data in before.items():
        assert after.get(path) == data, f"{path} changed or disappeared"
    empty = [p for p, data in after.items() if p not in before and not data]
    assert not empty, f"new 0-byte files: {empty}"


def _resave(path: Path, size: tuple[int, int]) -> None:
    Image.new("RGB", size, (90, 90, 90)).save(path)


def _edit_record(run: Path, edit) -> None:
    record = json.loads((run / "run.json").read_text())
    edit(record)
    (run / "run.json").write_text(json.dumps(record))


DAMAGE = {  # name: (what is done to the run, the file the error line must name)
    "missing mask": (lambda r: (r / "mask.png").unlink(), "mask.png"),
    "empty states": (lambda r: [p.unlink() for p in (r / "states").glob("*")], "states/"),
    "corrupt state": (lambda r: (r / "states" / "state_01.png").write_bytes(b"not a png"), "states/state_01.png"),
    "truncated state": (lambda r: (r / "states" / "state_02.png").write_bytes(
        (r / "states" / "state_02.png").read_bytes()[:80]), "states/state_02.png"),
    "resized state": (lambda r: _resave(r / "states" / "state_01.png", (16, 16)), "states/state_01.png"),
    "resized mask": (lambda r: _resave(r / "mask.png", (16, 24)), "mask.png"),
    "resized frame": (lambda r: _resave(r / "frames" / "frame_0002.png", (40, 32)), "frames/frame_0002.png"),
    "run.json not JSON": (lambda r: (r / "run.json").write_text("{"), "run.json"),
    "run.json not UTF-8": (lambda r: (r / "run.json").write_bytes(b"\xff\xfe{}"), "run.json"),
    "run.json a list": (lambda r: (r / "run.json").write_text("[]"), "run.json"),
    "run.json nested 100k": (lambda r: (r / "run.json").write_text("[" * 100_000 + "]" * 100_000), "run.json"),
    "rounds missing": (lambda r: _edit_record(r, lambda d: d["pie"].pop("rounds")), "run.json"),
    "rounds a string": (lambda r: _edit_record(r, lambda d: d["pie"].update(rounds="2")), "run.json"),
    "identity a string": (lambda r: _edit_record(r, lambda d: d["eval"].update(identity_similarity="x")),
                          "run.json"),
    "identity too short": (lambda r: _edit_record(r, lambda d: d["eval"].update(identity_similarity=[1.0])),
                           "run.json"),
    "eval a number": (lambda r: _edit_record(r, lambda d: d.update(eval=3)), "run.json"),
}


@pytest.mark.parametrize("against", [False, True], ids=["run", "against"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_eval_of_a_damaged_run_is_one_line(tiny_run: Path, tmp_path: Path, name: str, against: bool):
    """Before: FileNotFoundError, TypeError, UnidentifiedImageError, OSError, IndexError, RecursionError (exit 1),
    or (resized images, a list for run.json) a report without a word. No output is written either way."""
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_run, damaged)
    damage, named = DAMAGE[name]
    damage(damaged)
    before = snapshot(tmp_path)
    args = ["eval", "--run", str(tiny_run), "--against", str(damaged)] if against else ["eval", "--run", str(damaged)]
    code, _, err = run_main([*args, "--json", str(tmp_path / "report.json"), "--figure", str(tmp_path / "fig.png")])
    assert_one_line_exit_2(code, err, named, "rerun mvg-rt simulate")
    assert_untouched(before, tmp_path)
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "fig.png").exists()


def test_an_undamaged_run_still_evaluates(tiny_run: Path, tmp_path: Path):
    code, out, err = run_main(["eval", "--run", str(tiny_run), "--against", str(tiny_run), "--json",
                          str(tmp_path / "r.json"), "--figure", str(tmp_path / "f.png")])
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["against"]["min_states_psnr_db"] == 999.0 and len(report["identity_similarity"]) == 3
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG") and "wrote" in out
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) != "0o600"  # a normal file, not mkstemp's


@pytest.mark.parametrize("option", ["--json", "--figure"])
@pytest.mark.parametrize("where", ["no folder", "a file as folder", "a folder", "a file of the run", "bad suffix"])
def test_unwritable_outputs_are_refused_before_the_work(tiny_run: Path, tmp_path: Path, option: str, where: str):
    """Before: FileNotFoundError after the evaluation (--json), or --figure made the missing folders."""
    (tmp_path / "file").write_text("keep")
    (tmp_path / "dir.png").mkdir()
    path = {"no folder": tmp_path / "nodir" / "x.png", "a file as folder": tmp_path / "file" / "x.png",
            "a folder": tmp_path / "dir.png", "a file of the run": tiny_run / "states" / "state_01.png",
            "bad suffix": tmp_path / "x.nope"}[where]
    if where == "bad suffix" and option == "--json":
        pytest.skip("--json takes any name")
    before, run_before = snapshot(tmp_path), snapshot(tiny_run)
    code, out, err = run_main(["eval", "--run", str(tiny_run), option, str(path)])
    assert_one_line_exit_2(code, err, option)
    assert out == ""  # refused before anything was computed or printed
    assert not (tmp_path / "nodir").exists()
    assert_untouched(before, tmp_path)
    assert_untouched(run_before, tiny_run)


def test_check_json_path_is_refused_before_the_check(tmp_path: Path):
    """Before: the whole check ran, then FileNotFoundError (exit 1). The engines folder does not even exist:
    the output path is the first thing checked."""
    code, out, err = run_main(["check", "--engines", str(tmp_path / "engines"), "--json", str(tmp_path / "no" / "c.json")])
    assert_one_line_exit_2(code, err, "--json", "does not exist")


# ---- a real full disk (tmpfs) ---------------------------------------------------------------------------------

@contextlib.contextmanager
def full_disk(size: str):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (a real full disk)")
    folder = Path(tempfile.mkdtemp(prefix="mvg-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def _fill(folder: Path) -> None:
    """Leave the tmpfs without a free block."""
    with open(folder / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(b"\0" * 4096)


def test_make_tiny_model_on_a_full_disk(tmp_path: Path):
    """Before: SafetensorError "No space left on device (os error 28)" as an internal error, exit 1."""
    with full_disk("1m") as disk:
        code, _, err = run_main(["make-tiny-model", str(disk / "model")])
        assert_one_line_exit_2(code, err, "no space left")
        assert list(disk.iterdir()) == []  # no staging folder, no 0-byte file


def test_eval_on_a_full_disk_keeps_the_old_report(tiny_run: Path):
    """Before: a 0-byte report.json replaced the earlier one, and the line said nothing partial was kept."""
    with full_disk("64k") as disk:
        (disk / "report.json").write_text("earlier report\n")
        (disk / "fig.png").write_bytes(b"earlier figure")
        _fill(disk)
        before = snapshot(disk)
        for option, name in (("--json", "report.json"), ("--figure", "fig.png")):
            code, _, err = run_main(["eval", "--run", str(tiny_run), option, str(disk / name)])
            assert_one_line_exit_2(code, err, "no space left", name)
        assert_untouched(before, disk)
        assert sorted(p.name for p in disk.iterdir()) == ["fig.png", "filler", "report.json"]


def test_export_on_a_full_disk(tiny_model_dir: Path):
    """A full disk at any export step: the one line, exit 2, nothing left (see the shape inference test below)."""
    with full_disk("2m") as disk:
        code, _, err = run_main(["export", "--model-dir", str(tiny_model_dir), "--no-seine", "--out", str(disk / "e")])
        assert_one_line_exit_2(code, err, "no space left", progress=tuple(f"{c}: " for c in COMPONENTS))
        assert list(disk.iterdir()) == []


def test_shape_inference_short_write_is_a_full_disk(tmp_path: Path):
    import onnx

    from mvg_rt.export.onnx_export import infer_shapes

    # 300 chained nodes without shapes: inference adds a shape per value, several pages more than the file had
    nodes = [onnx.helper.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(300)]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("v0", onnx.TensorProto.FLOAT,
                                                                                   [2, 3])],
                                   [onnx.helper.make_tensor_value_info("v300", onnx.TensorProto.FLOAT, None)])
    with full_disk("64k") as disk:
        onnx.save_model(onnx.helper.make_model(graph), str(disk / "m.onnx"))
        _fill(disk)
        with pytest.raises(OSError) as caught:  # before: returned, leaving a truncated graph
            infer_shapes(disk / "m.onnx")
        assert caught.value.errno == errno.ENOSPC


# ---- a closed pipe --------------------------------------------------------------------------------------------

def test_eval_into_a_closed_pipe_is_quiet(tiny_run: Path):
    """``mvg-rt eval ... | head -1``: no traceback, no message, exit 1 (what rich and Python do on EPIPE)."""
    shell = (f"{sys.executable} -m mvg_rt.cli eval --run {tiny_run} --against {tiny_run} | head -c 1 >/dev/null;"
             " exit ${PIPESTATUS[0]}")
    writer = subprocess.run(["bash", "-c", shell], stderr=subprocess.PIPE, cwd=REPO, text=True, timeout=120,
                            env=os.environ | {"COLUMNS": "400"})
    assert writer.returncode in (0, 1) and writer.stderr == "", writer.stderr


def test_broken_pipe_in_main_is_quiet(monkeypatch: pytest.MonkeyPatch):
    """A BrokenPipeError raised by any command (click.echo after rich's table) ends quietly with exit 1."""
    import mvg_rt.cli as cli_module

    def closed_pipe(**_kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli_module.cli, "main", closed_pipe)
    code, out, err = run_main(["eval", "--run", "x"])
    assert (code, out, err) == (1, "", "")


# ---- generated damage ------------------------------------------------------------------------------------------

@st.composite
def damages(draw, files: list[str]) -> list[tuple[str, str, int, bytes]]:
    """Up to three edits: (file, kind, position, bytes), kinds: delete, truncate, flip, replace, append, empty."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        edits.append((draw(st.sampled_from(files)),
                      draw(st.sampled_from(["delete", "truncate", "flip", "flip", "replace", "append", "empty",
                                            "json"])),
                      draw(st.integers(0, 2**16)), draw(st.binary(max_size=24))))
    return edits


JSON_VALUES = [None, True, -1, 0, 2, 10**400, 1.5, "2", [], {}, [1.0], {"rounds": 2}, "x" * 5]


def _apply(run: Path, name: str, kind: str, position: int, data: bytes) -> None:
    path = run / name
    if not path.is_file():
        return
    content = path.read_bytes()
    if kind == "delete":
        path.unlink()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncate":
        path.write_bytes(content[: position % max(1, len(content))])
    elif kind == "flip" and content:
        changed = bytearray(content)
        changed[position % len(content)] ^= 1 << (position % 8)
        path.write_bytes(bytes(changed))
    elif kind == "replace":
        path.write_bytes(data)
    elif kind == "append":
        path.write_bytes(content + data)
    elif kind == "json" and name == "run.json":  # a well-formed record with one value of the wrong type
        try:
            record = json.loads(content)
        except ValueError:  # an earlier edit of this case broke the JSON already: that damage stays
            return
        if not isinstance(record, dict):
            return
        key = ["mvg_rt_run", "pie", "eval"][position % 3]
        value = JSON_VALUES[position % len(JSON_VALUES)]
        if key == "eval" and isinstance(record.get("eval"), dict) and position % 2:
            record["eval"]["identity_similarity" if position % 4 == 1 else "identity_embedding"] = value
        elif key == "pie" and isinstance(record.get("pie"), dict) and position % 2:
            record["pie"]["rounds"] = value
        else:
            record[key] = value
        path.write_text(json.dumps(record))


@settings(max_examples=200 * SCALE)
@given(data=st.data())
def test_fuzz_damaged_runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject):
    """Random damage to a real run's files: exit 0 or 2, never 1; one line on failure; nothing changed."""
    files = sorted(str(p.relative_to(tiny_run)) for p in tiny_run.rglob("*") if p.is_file())
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        run = root / "run"
        shutil.copytree(tiny_run, run)
        for edit in data.draw(damages(files)):
            _apply(run, *edit)
        (root / "report.json").write_text("earlier")
        before = snapshot(root)
        against = ["--against", str(tiny_run)] if data.draw(st.booleans()) else []
        code, _, err = run_main(["eval", "--run", str(run), *against, "--json", str(root / "report.json")])
        assert code in (0, 2), err
        assert "Traceback" not in err and "internal error" not in err, err
        if code == 2:
            assert_one_line_exit_2(code, err)
            assert_untouched(before, root)
        else:
            assert_untouched({p: d for p, d in before.items() if p.name != "report.json"}, root)
            json.loads((root / "report.json").read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)
