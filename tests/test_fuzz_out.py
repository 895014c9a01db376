"""Property-based fuzzing of ``--out`` over a generated tree of the user's files (issue 18).

Hypothesis builds a folder tree per case: the working folder two levels down, the user's own files at
every level, the run's inputs (image, mask, worklist), a model folder, earlier outputs with and without
mvg-rt's marker, an empty folder, hidden folders whose names look like (or exactly match) mvg-rt's staging
names, a dead run's real staging folder, symbolic links to folders and files, a dangling link and a plain
file. It then runs the real CLI (simulate, export, batch) with an ``--out`` drawn from ``.``, ``..``, ``""``,
``./``, the working folder and its ancestors, the home folder, the inputs and their folders, every entry of
the tree, new names of every length around the file system's limit, with and without ``--overwrite``
(``--redo`` for batch).

After each case:

- every file, folder and link that existed before is still there, byte for byte, except an earlier
  mvg-rt output that the run was allowed to replace (and a dead run's staging folder, which recovery
  removes);
- the exit code is 0 or 2 (never 1: an internal error is a bug), a refusal is one line, and no staging
  folder or lock is left behind;
- a success wrote a marked folder at ``--out``.

Most cases are refusals, or stop right after the claim (an unreadable image, an export option pair
the export refuses), so the claim, its checks and the recovery next to ``--out`` run every time; a few are real tiny
runs (1 round, 2 steps at strength 0.5, 32 px, no transitions) so that success, the commit and
``--overwrite`` are covered.
Profiles as in tests/test_fuzz_cli.py: ``MVG_FUZZ_PROFILE=ci`` (default, derandomized, 1,000 cases) or
``long`` (10,000, random seeds).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzzing import SCALE, run_main, tree_snapshot

from mvg_rt.io.output_dir import MARKER, PARTIAL, mark_output, output_kind


FAST = ["--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32", "--no-transition"]
PROGRESS_LINE = re.compile(r"^(mvg-rt: (PIE round|transition clip) \d+/\d+ done \(|note: |case \w+: )")  # batch's too
LEFTOVER = re.compile(r"\.mvg-(partial|old)-|\.mvg-lock$")
LOOK_ALIKES = [".notes.partial-abcdefgh", ".config.old-backup01", ".photos.old-20240101", ".thesis.mvg-old-v2",
               ".new.mvg-partial-abcd1234", ".old.mvg-old-zz99zz99", ".mine.mvg-partial-x"]
USER_NAMES = ["precious.txt", "notes.md", "SECRET_Doe.png", ".hidden", "data.csv", "x", "run.json", MARKER]
CASES: dict[str, int] = {}
OUTCOMES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz_out")


@pytest.fixture(scope="module")
def model(fuzz_root: Path, tiny_model_dir: Path) -> Path:
    """A copy of the tiny model, marked as make-tiny-model marks it: only the inputs rule keeps it safe."""
    copy = fuzz_root / "model"
    shutil.copytree(tiny_model_dir, copy)
    mark_output(copy, "model")
    return copy


def _signature(folder: Path) -> dict[str, tuple[int, int, int]]:
    """A cheap identity of every file (inode, size, mtime): the model is too big to compare byte for byte per case."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _picture(path: Path) -> None:
    y, x = np.mgrid[0:40, 0:48] / 40.0
    Image.fromarray((128 + 100 * np.sin(4 * x) * np.cos(3 * y)).astype(np.uint8)).save(path)


# ---- the generated tree ---------------------------------------------------------------------------------------

@st.composite
def trees(draw, root: Path) -> dict[str, object]:
    """Write a tree of the user's files and mvg-rt's outputs under ``root``; returns what the case needs."""
    cwd = root / "work" / "sub"
    inputs, runs = root / "inputs", root / "runs"
    for folder in (cwd, inputs, runs):
        folder.mkdir(parents=True)
    places = [root, root / "work", cwd, inputs, runs]
    for _ in range(draw(st.integers(0, 6))):
        place = draw(st.sampled_from(places))
        (place / draw(st.sampled_from(USER_NAMES))).write_bytes(draw(st.binary(max_size=24)))
    real = draw(st.integers(0, 19)) == 0  # a real tiny run; otherwise the image is unreadable (stops after the claim)
    image = inputs / "img.png"
    if real:
        _picture(image)
    else:
        image.write_bytes(b"not an image")
    if draw(st.booleans()):
        mark_output(inputs, "run")  # an earlier run's folder that now holds an input: the inputs rule guards it
    (root / "home").mkdir()
    old = runs / "old"
    (old / "states").mkdir(parents=True)
    (old / "states" / "state_00.png").write_bytes(b"earlier state")
    mark_output(old, draw(st.sampled_from(["run", "engines", "model"])))
    (runs / "mine").mkdir()
    (runs / "mine" / "thesis.tex").write_text("years of work")
    (runs / "empty").mkdir()
    bench = runs / "bench"
    bench.mkdir()
    (bench / "bench.json").write_text("{}")
    mark_output(bench, "bench")
    batch = runs / "batch"
    (batch / "imgs").mkdir(parents=True)
    (batch / "imgs" / "SECRET_Doe.png").write_bytes(b"a user's image in the batch folder")
    mark_output(batch, "batch")
    for name in draw(st.lists(st.sampled_from(LOOK_ALIKES), max_size=4, unique=True)):
        (runs / name).mkdir()
        (runs / name / "mine.txt").write_text(name)
    ours = []
    if draw(st.booleans()):  # a dead run's staging folder (marked) and its lock: recovery may remove them
        dead = runs / ".gone.mvg-partial-dead1234"
        dead.mkdir()
        mark_output(dead, "run")
        (dead / "half.png").write_bytes(b"half")
        (runs / ".gone.mvg-lock").write_bytes(b"")
        ours = [dead.name, ".gone.mvg-lock"]
    (runs / "afile.txt").write_text("a file")
    (runs / "link_dir").symlink_to(draw(st.sampled_from([old, runs / "mine", runs / "empty"])))
    (runs / "link_file").symlink_to(image)
    (runs / "dangling").symlink_to(runs / "nowhere")
    worklist = inputs / "list.csv"
    worklist.write_text(f"case_id,image,prompt\n{draw(st.sampled_from(['c1', 'imgs']))},img.png,cardiomegaly\n")
    return {"cwd": cwd, "image": image, "worklist": worklist, "real": real, "ours": ours}


def _out_values(root: Path, cwd: Path, model: Path) -> st.SearchStrategy[str]:
    name_max = os.pathconf(root, "PC_NAME_MAX")
    longest = name_max - len(".") - len(PARTIAL) - 8
    runs = root / "runs"
    lengths = [longest - 1, longest, longest + 1, name_max - 9, name_max, name_max + 4]
    return st.one_of(
        st.sampled_from([".", "..", "", "./", "../..", "../../..", "./.", "x/..", str(cwd), str(root), str(cwd.parent),
                         "~", "/", str(root / "home"), "../sub", str(model), str(model.parent), str(model / "unet"),
                         str(root / "inputs"), str(root / "inputs" / "img.png"), str(root / "inputs" / "list.csv")]),
        st.sampled_from(["old", "mine", "empty", "bench", "batch", "batch/imgs", "afile.txt", "link_dir", "link_file",
                         "dangling", "new", "deep/er/new", *LOOK_ALIKES]).map(lambda name: str(runs / name)),
        st.builds(lambda n, letter: str(runs / (letter * n)), st.sampled_from(lengths), st.sampled_from(["r", "é"])),
        st.sampled_from(["../../runs/new", "../../runs/old", "../../runs/mine", "../../inputs"]),
    )


# ---- one case -------------------------------------------------------------------------------------------------

def _invoke(args: list[str]) -> tuple[int, str]:
    code, _, err = run_main(args)
    return code, err


def _absolute(out: str, cwd: Path) -> Path:
    """``out`` as the CLI's working folder sees it (``~`` is a folder named ~ here: the shell expands it)."""
    return Path(os.path.abspath(cwd / out))


def _replaceable(root: Path, out: str, cwd: Path) -> Path | None:
    """The folder a successful run may have replaced (an earlier mvg-rt output there), as a key prefix."""
    path = _absolute(out, cwd)
    try:
        relative = path.relative_to(root)
    except ValueError:
        return None
    return relative if output_kind(path) is not None and not path.is_symlink() else None


@settings(max_examples=1000 * SCALE)
@given(data=st.data())
def test_fuzz_out_never_loses_a_file(fuzz_root: Path, model: Path, data: st.DataObject):
    root = Path(tempfile.mkdtemp(dir=fuzz_root))
    previous_cwd, previous_home = os.getcwd(), os.environ.get("HOME")
    try:
        tree = data.draw(trees(root))
        cwd = tree["cwd"]
        out = data.draw(_out_values(root, cwd, model))
        command = data.draw(st.sampled_from(["simulate"] * 6 + ["export", "batch"]))
        overwrite = data.draw(st.booleans())
        if command == "simulate":
            args = ["simulate", "--model-dir", str(model), "--image", str(tree["image"]), "--prompt", "p", *FAST]
            if data.draw(st.booleans()):
                args += ["--mask", str(tree["image"])]
            args += ["--overwrite"] if overwrite else []
        elif command == "export":  # the converter without --fp16 is refused after the claim: no export runs
            args = ["export", "--model-dir", str(model), "--fp16-converter", "modelopt"] + (
                ["--overwrite"] if overwrite else [])
        else:
            args = ["batch", str(tree["worklist"]), "--model-dir", str(model), *FAST]
            args += ["--redo"] if overwrite else []
        os.environ["HOME"] = str(root / "home")
        os.chdir(cwd)
        before, model_before = tree_snapshot(root), _signature(model)
        replaceable = _replaceable(root, out, cwd)
        code, err = _invoke([*args, "--out", out])
        os.chdir(previous_cwd)

        kind = f"{command}:{'real' if tree['real'] else 'stop'}"
        CASES[kind] = CASES.get(kind, 0) + 1
        OUTCOMES[f"exit {code}"] = OUTCOMES.get(f"exit {code}", 0) + 1
        # batch: 3 is "some cases failed" (its one case read the unreadable image), not an internal error
        assert code in ((0, 2, 3) if kind == "batch:stop" else (0, 2)), (args, out, err)
        assert "Traceback" not in err, (args, out, err)
        problems = [line for line in err.splitlines() if not PROGRESS_LINE.match(line)]
        if code == 2:
            assert len(problems) == 1 and problems[0].startswith("mvg-rt: error: "), (args, out, err)
        else:
            assert problems == [], (args, out, err)
        after = tree_snapshot(root)
        lost = [key for key, value in before.items()
                if after.get(key, "<gone>") != value
                and not (code == 0 and replaceable is not None and Path(key).is_relative_to(replaceable))
                and not set(key.split("/")) & set(tree["ours"])]
        assert not lost, (args, out, err, lost)
        assert model_before == _signature(model), (args, out, err)
        written = _absolute(out, cwd)
        new = [key for key in after if key not in before and LEFTOVER.search(key)
               and not (code in (0, 3) and (root / key).is_relative_to(written))]  # --out may be any name asked for
        assert not new, (args, out, err, new)
        if code in (0, 3):
            assert output_kind(written) in ("run", "batch"), (args, out)
    finally:
        os.chdir(previous_cwd)
        if previous_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = previous_home
        shutil.rmtree(root, ignore_errors=True)


def test_fuzz_out_case_count(model: Path, tiny_model_dir: Path):
    """Runs after the fuzz test above (file order): at least 1,000 cases (ci), some of them real runs; and the
    model folder, an input of every case, is byte for byte the tiny model it was copied from."""
    total = sum(CASES.values())
    print(f"\nfuzz --out cases: {CASES}, total {total}; outcomes {OUTCOMES}")
    if total:  # the fuzz test ran (not a -k selection)
        assert total >= 1000 * SCALE, CASES
        assert OUTCOMES.get("exit 0", 0) > 0 and OUTCOMES.get("exit 2", 0) > 0, OUTCOMES
    copied = {k: v for k, v in tree_snapshot(model).items() if k != MARKER}
    assert copied == tree_snapshot(tiny_model_dir)
