"""Property-based fuzzing of ``mvg-rt simulate`` (issue 13): hypothesis generates command lines, images,
masks and DICOM headers and runs the real CLI entry point on the tiny model.

For every generated invocation:

- the exit code is 0 or 2 (never 1: an internal error is a bug), and no traceback is printed;
- a failure prints exactly one problem line (progress lines of a run that got going are allowed);
- no folder is left behind (no ``--out`` after a failure, no hidden staging folder ever);
- every ``run.json`` is strict JSON (no NaN/Infinity) and no DICOM identifier reaches an output.

Most cases fail fast in validation; successful runs are kept tiny (1 round, 2 steps, 32-48 px,
no transitions or a 3-frame 1-step clip). Profiles: ``MVG_FUZZ_PROFILE=ci`` (default, derandomized,
about a minute on 2 cores) or ``MVG_FUZZ_PROFILE=long`` (ten times the cases, random seeds).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from fuzzing import SCALE, run_main


IDENTIFIER = "FUZZ^PATIENT^7731"
STAGE_LINE = re.compile(r"^mvg-rt: (PIE round|transition clip) \d+/\d+ done \(")
NOTE_LINE = re.compile(r"^(note|warning): ")  # warning: some transition clip fails the standard
CASES: dict[str, int] = {}
OUTCOMES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models on a shared 2-core machine: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def fuzz_image(fuzz_root: Path) -> Path:
    path = fuzz_root / "xray.png"
    y, x = np.mgrid[0:40, 0:48] / 40.0
    Image.fromarray((128 + 100 * np.sin(4 * x) * np.cos(3 * y)).astype(np.uint8)).save(path)
    return path


def invoke(kind: str, args: list[str], case_dir: Path, out: Path, out_existed: bool) -> tuple[int, str]:
    """Run the CLI in this process (what the console script runs) and check every property."""
    code, _, err = run_main(args)
    CASES[kind] = CASES.get(kind, 0) + 1
    OUTCOMES[f"exit {code}"] = OUTCOMES.get(f"exit {code}", 0) + 1
    assert code in (0, 2), (args, err)
    assert "Traceback" not in err and "Warning" not in err, (args, err)
    problems = [line for line in err.splitlines() if not STAGE_LINE.match(line) and not NOTE_LINE.match(line)]
    hidden = [p.name for p in out.parent.iterdir() if p.name.startswith(".")] if out.parent.exists() else []
    assert not hidden, (args, hidden)
    if code == 2:
        assert len(problems) == 1 and problems[0].startswith("mvg-rt: error: "), (args, err)
        assert out.exists() == out_existed, args
    else:
        assert problems == [], (args, err)
        record = json.loads((out / "run.json").read_text(), parse_constant=_refuse)
        assert record["mvg_rt_run"] == 1
        for path in out.rglob("*"):
            if path.is_file():
                assert IDENTIFIER.encode() not in path.read_bytes(), path
    return code, err


def _refuse(constant: str) -> None:
    raise AssertionError(f"run.json holds {constant}")


@contextlib.contextmanager
def case_folder(root: Path):
    folder = Path(tempfile.mkdtemp(dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ---- 1. options: every numeric and text option, good values and hostile ones --------------------------------

NUMBER_TEXT = st.one_of(
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "-0", "0", "1", "0.5", "", " ", "1e-320", "0x10", "1_0",
                     "NaN", "Infinity", "3.", ".5", "1e3", "2**63", "9223372036854775808", "-9223372036854775809",
                     "1180591620717411303424", "１２", "12abc"]),
    st.integers(-10**22, 10**22).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-3, 1100).map(str),
    st.floats(-2, 2).map(lambda v: f"{v:.3f}"),
)
NUMERIC = ["--rounds", "--strength", "--steps", "--guidance", "--beta1", "--beta2", "--seed", "--resolution",
           "--frames", "--transition-steps", "--transition-guidance", "--fps", "--feather"]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
CHOICES = {
    "--backend": st.sampled_from(["torch", "ort", "trt", "TORCH", "onnx", ""]),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:x", "tpu", "CPU", "", "mps", "cuda:99"]),
    "--precision": st.sampled_from(["fp32", "fp16", "bf16"]),
    "--scheduler": st.sampled_from(["ddim", "pndm", "euler", "lms", "dpm-multistep", "nope", ""]),
    "--transition-sampler": st.sampled_from(["ddpm", "ddim", "dpm++2m", "unipc", "plms"]),
    "--transitions": st.sampled_from(["paper", "fast", "slow"]),
    "--roi-box": st.one_of(TEXT, st.lists(NUMBER_TEXT, min_size=3, max_size=5).map(",".join)),
    "--roi-ellipse": st.one_of(TEXT, st.lists(NUMBER_TEXT, min_size=3, max_size=5).map(",".join)),
    "--prompt": TEXT,
    "--negative-prompt": TEXT,
    "--unknown-option": st.just("x"),
}
FLAGS = ["--no-transition", "--record-paths", "--cuda-graphs", "--low-memory", "--overwrite"]


@st.composite
def option_lines(draw) -> list[str]:
    args: list[str] = []
    for name in draw(st.lists(st.sampled_from(NUMERIC + list(CHOICES)), max_size=6, unique=True)):
        value = draw(NUMBER_TEXT if name in NUMERIC else CHOICES[name])
        args += [name, value]
    args += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    if draw(st.booleans()):
        args.append(draw(st.sampled_from(["--rounds", "--prompt", "--mask", "-x", "extra"])))  # dangling/extra
    return args


@settings(max_examples=650 * SCALE)
@given(args=option_lines())
def test_fuzz_options(fuzz_root: Path, tiny_model_dir: Path, fuzz_image: Path, args: list[str]):
    """Valid option sets stop at the claim of an --out that already holds results (no model is loaded)."""
    with case_folder(fuzz_root) as folder:
        out = folder / "out"
        out.mkdir()
        (out / "earlier.txt").write_text("keep")
        args = [a for a in args if a != "--overwrite"]
        invoke("options", ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(fuzz_image), *args,
                           "--out", str(out)], folder, out, out_existed=True)
        assert (out / "earlier.txt").read_text() == "keep"


# ---- 2. images and masks: sizes, modes, formats, corrupt bytes ------------------------------------------------

MODES = ["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "I", "F", "CMYK"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "bmp": "BMP", "gif": "GIF", "tif": "TIFF", "webp": "WEBP"}


@st.composite
def image_files(draw, folder: Path, name: str) -> Path | None:
    kind = draw(st.sampled_from(["image", "image", "image", "garbage", "truncated", "bitflip", "missing", "empty"]))
    path = folder / f"{name}.{draw(st.sampled_from(list(FORMATS)))}"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "garbage":
        path.write_bytes(draw(st.binary(max_size=200)))
        return path
    width, height = draw(st.integers(1, 72)), draw(st.integers(1, 72))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), np.uint8)
    image = Image.fromarray(pixels).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray((pixels.astype(np.uint16) * 257) if mode == "I;16" else pixels.astype(
            np.int32 if mode == "I" else np.float32))
    fmt = FORMATS[path.suffix[1:]]
    try:
        image.save(path, format=fmt)
    except (OSError, ValueError, KeyError):
        image.convert("RGB").save(path, format=fmt)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: draw(st.integers(0, max(0, len(data) - 1)))])
    elif kind == "bitflip":
        data = bytearray(path.read_bytes())
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        path.write_bytes(bytes(data))
    return path


@settings(max_examples=200 * SCALE)
@given(data=st.data())
def test_fuzz_images_and_masks(fuzz_root: Path, tiny_model_dir: Path, data: st.DataObject):
    with case_folder(fuzz_root) as folder:
        image = data.draw(image_files(folder, "image"))
        roi = data.draw(st.sampled_from(["none", "mask", "mask", "box", "ellipse"]))
        args = ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(image), "--prompt", "effusion",
                "--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition",
                "--resolution", str(data.draw(st.sampled_from([32, 40, 48])))]
        if roi == "mask":
            args += ["--mask", str(data.draw(image_files(folder, "mask")))]
        elif roi in ("box", "ellipse"):
            numbers = data.draw(st.lists(st.integers(-20, 90), min_size=4, max_size=4))
            args += [f"--roi-{roi}", ",".join(map(str, numbers))]
        if data.draw(st.booleans()):
            args += ["--feather", str(data.draw(st.integers(0, 12)))]
        out = folder / "runs" / "out"
        invoke("images", [*args, "--out", str(out)], folder, out, out_existed=False)


# ---- 3. DICOM headers -------------------------------------------------------------------------------------------

@st.composite
def dicom_files(draw, folder: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                             ImplicitVRLittleEndian, JPEGLSLossless)

    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                   ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, JPEGLSLossless]))
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName = IDENTIFIER
    ds.PatientID = IDENTIFIER
    rows, columns = draw(st.integers(0, 64)), draw(st.integers(0, 64))
    bits = draw(st.sampled_from([8, 16, 16, 32, 1, 12]))
    samples = draw(st.sampled_from([1, 1, 3]))
    frames = draw(st.sampled_from([None, 1, 2]))
    ds.Rows, ds.Columns, ds.BitsAllocated = rows, columns, bits
    ds.BitsStored = draw(st.sampled_from([bits, max(1, bits - 4), bits + 4]))
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = draw(st.sampled_from([0, 1]))
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PlanarConfiguration = draw(st.sampled_from([0, 1]))
    ds.PhotometricInterpretation = draw(st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR",
                                                         "YBR_FULL", "BOGUS"]))
    if frames is not None:
        ds.NumberOfFrames = frames
    specials = st.sampled_from(["1", "0", "-1", "2.5", "1e30", "nan", "inf", "-inf", "4000", "0.0001"])
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if draw(st.booleans()):
            setattr(ds, tag, draw(specials))
    if draw(st.booleans()):
        ds.VOILUTFunction = draw(st.sampled_from(["LINEAR", "SIGMOID", "LINEAR_EXACT", "ODD"]))
    size = rows * columns * samples * (frames or 1) * max(1, bits // 8)
    pixel_kind = draw(st.sampled_from(["exact", "exact", "exact", "short", "none", "long"]))
    if pixel_kind != "none":
        length = {"exact": size, "short": size // 2, "long": size + 8}[pixel_kind]
        seed = draw(st.integers(0, 2**16))
        ds.PixelData = np.random.default_rng(seed).integers(0, 256, length + (length % 2), np.uint8).tobytes()
        ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    path = folder / draw(st.sampled_from(["scan.dcm", "scan.DCM", "scan"]))
    try:
        ds.save_as(path, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - pydicom refuses to write some combinations: not a case for mvg-rt
        assume(False)
    return path


@settings(max_examples=150 * SCALE)
@given(data=st.data())
def test_fuzz_dicom_headers(fuzz_root: Path, tiny_model_dir: Path, data: st.DataObject):
    with case_folder(fuzz_root) as folder:
        path = data.draw(dicom_files(folder))
        out = folder / "runs" / "out"
        transition = ["--frames", "3", "--transition-steps", "1"] if data.draw(st.integers(0, 9)) == 0 \
            else ["--no-transition"]
        invoke("dicom", ["simulate", "--model-dir", str(tiny_model_dir), "--image", str(path), "--prompt",
                         "cardiomegaly", "--rounds", "1", "--steps", "2", "--strength", "0.5", "--resolution", "32",
                         *transition, "--out", str(out)], folder, out, out_existed=False)


def test_fuzz_case_count():
    """Runs after the fuzz tests above (file order): the CI profile generates at least 1,000 invocations."""
    total = sum(CASES.values())
    print(f"\nfuzz cases: {CASES}, total {total}; outcomes {OUTCOMES}")
    if len(CASES) == 3:  # the whole module ran (not a -k selection)
        assert total >= 1000 * SCALE * 0.95, CASES
