"""The segmenter (box -> ROI, as MedSAM makes the paper's ROI): the torch path, MedSAM's preprocessing,
``mvg-rt segment``, ``simulate --segment``'s run.json record and one-line errors, on a tiny random SamModel;
and the demo segmenter's quality against the phantoms' true hearts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvg_rt.components import SEGMENTER_DECODER, SEGMENTER_ENCODER

TINY_SAM = {
    "vision_config": {"hidden_size": 32, "output_channels": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "image_size": 64, "patch_size": 8, "window_size": 4, "global_attn_indexes": [1],
                      "mlp_dim": 64, "num_pos_feats": 8},
    "prompt_encoder_config": {"hidden_size": 16, "image_size": 64, "patch_size": 8, "mask_input_channels": 4},
    "mask_decoder_config": {"hidden_size": 16, "mlp_dim": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "iou_head_hidden_dim": 16},
}
BOX = "20,16,100,70"  # inside the 128x192 test X-ray (width 192, height 128)


@pytest.fixture(scope="module")
def segmenter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny SamModel folder (config.json + model.safetensors), as MedSAM ships."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sam") / "tiny-sam"
    SamModel(SamConfig(**TINY_SAM)).save_pretrained(folder)
    return folder


@pytest.fixture
def xray(tmp_path: Path, image_64: np.ndarray) -> Path:
    path = tmp_path / "xray.png"
    Image.fromarray(np.kron(image_64[..., 0], np.ones((2, 3), np.uint8))).save(path)  # 128x192 grey
    return path


def test_medsam_preprocessing_and_box_frame():
    from mvg_rt.runtime.pipelines.segmentation import box_in_frame, segmenter_input

    grey = np.tile(np.linspace(40, 200, 50, dtype=np.float32), (30, 1)).astype(np.uint8)  # 30x50, not square
    pixels = segmenter_input(grey, 64)
    assert pixels.shape == (1, 3, 64, 64)
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == 1.0  # min-max, no mean/std
    assert torch.equal(pixels[:, 0], pixels[:, 2])  # grey repeated to RGB
    box = box_in_frame([5, 3, 25, 15], grey.shape, 64)  # each axis scaled as the image is squashed
    assert torch.allclose(box, torch.tensor([[[6.4, 6.4, 32.0, 32.0]]]))


def test_torch_path_embeds_once_and_decodes_per_box(segmenter_dir: Path, image_64: np.ndarray):
    from mvg_rt.runtime.factory import open_segmenter
    from mvg_rt.runtime.pipelines.segmentation import segment_boxes

    with open_segmenter(segmenter_dir) as segmenter:
        calls: list[str] = []
        infer = segmenter.backend._infer
        segmenter.backend._infer = lambda component, feeds: calls.append(component.name) or infer(component, feeds)
        results = segment_boxes(segmenter.backend, segmenter.image_size, image_64, [(4, 4, 40, 40), (0, 0, 64, 64)])
        embeddings = segmenter.backend.embed_image_for_segmentation(torch.zeros(1, 3, 64, 64))
        logits, iou = segmenter.backend.segment_boxes(embeddings, torch.tensor([[[1.0, 2.0, 30.0, 40.0]]]))
    assert calls == ["segmenter_encoder", "segmenter_decoder", "segmenter_decoder", "segmenter_encoder",
                     "segmenter_decoder"]
    assert embeddings.shape == (1, 16, 8, 8) and len(SEGMENTER_ENCODER.outputs[0].axes) == 4
    assert logits.shape == (1, 1, 32, 32) and iou.shape == (1, 1) and len(SEGMENTER_DECODER.outputs) == 2
    for result in results:
        assert result.mask.shape == (64, 64) and set(np.unique(result.mask)) <= {0, 255}
    assert segmenter.provenance["segmenter_sha256"]


def test_a_model_folder_s_own_segmenter_is_picked_up(segmenter_dir: Path, tmp_path: Path):
    from mvg_rt.models.segmenter_folder import segmenter_folder

    shutil.copytree(segmenter_dir, tmp_path / "model" / "segmenter")
    assert segmenter_folder(tmp_path / "model") == tmp_path / "model" / "segmenter"
    assert segmenter_folder(segmenter_dir) == segmenter_dir


def test_segment_writes_a_reviewable_mask(segmenter_dir: Path, xray: Path, tmp_path: Path, run_cli):
    out, record_file = tmp_path / "mask.png", tmp_path / "mask.json"
    code, stdout, err = run_cli(["segment", "--segmenter", str(segmenter_dir), "--image", str(xray), "--box", BOX,
                                 "--out", str(out), "--json", str(record_file)])
    assert code == 0, err
    mask = np.asarray(Image.open(out))
    assert mask.shape == (128, 192) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    record = json.loads(record_file.read_text())
    assert record["area"] == int((mask > 0).sum()) and f"{record['area']} px" in stdout and "IoU score" in stdout
    assert record["box"] == [20, 16, 100, 70] and len(record["segmenter_sha256"]) == 64
    assert "segmenter" not in record  # its path only with --record-paths
    code, _, err = run_cli(["segment", "--model-dir", str(segmenter_dir), "--image", str(xray), "--box", BOX,
                            "--out", str(out), "--json", str(record_file), "--record-paths"])
    assert code == 0, err
    assert json.loads(record_file.read_text())["segmenter"] == str(segmenter_dir)


@pytest.mark.parametrize(("box", "message"), [
    ("20,16,300,70", "--box 20,16,300,70 is not inside the 192x128 image"),
    ("20,16,10,70", "x1 must exceed x0"),
    ("1,2,3", "--box takes 4 comma-separated numbers"),
])
def test_a_bad_box_is_one_line(segmenter_dir: Path, xray: Path, tmp_path: Path, run_cli, box: str, message: str):
    code, _, err = run_cli(["segment", "--segmenter", str(segmenter_dir), "--image", str(xray), "--box", box,
                            "--out", str(tmp_path / "mask.png")])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "mask.png").exists()


def test_a_bad_segmenter_folder_is_one_line(xray: Path, tmp_path: Path, tiny_model_dir: Path, segmenter_dir: Path,
                                            run_cli):
    broken = tmp_path / "no-weights"
    broken.mkdir()
    shutil.copy(segmenter_dir / "config.json", broken / "config.json")
    for folder, message in ((tmp_path / "missing", "no such folder"), (tmp_path, "holds no config.json"),
                            (tiny_model_dir / "unet", "not SAM"), (broken, "holds no weights")):
        code, _, err = run_cli(["segment", "--segmenter", str(folder), "--image", str(xray), "--box", BOX,
                                "--out", str(tmp_path / "mask.png")])
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


SIMULATE = ["--rounds", "1", "--steps", "2", "--strength", "0.5", "--no-transition"]


def test_simulate_segments_the_box_and_records_the_segmenter(segmenter_dir: Path, tiny_model_dir: Path, xray: Path,
                                                             tmp_path: Path, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "x",
                            "--roi-box", BOX, "--segment", str(segmenter_dir), "--segment-grow", "3",
                            "--out", str(out), *SIMULATE])
    assert code == 0, err
    roi = json.loads((out / "run.json").read_text())["roi"]
    assert roi["source"] == "segmenter" and roi["box"] == [20, 16, 100, 70] and roi["grow"] == 3
    assert len(roi["segmenter_sha256"]) == 64 and isinstance(roi["iou_score"], float)
    assert str(segmenter_dir) not in (out / "run.json").read_text()
    boxed = tmp_path / "boxed"
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "x",
                            "--roi-box", BOX, "--out", str(boxed), *SIMULATE])
    assert code == 0, err  # without --segment the box is the ROI, as before
    assert json.loads((boxed / "run.json").read_text())["roi"]["source"] == f"box {BOX}"
    assert not np.array_equal(np.asarray(Image.open(out / "mask.png")), np.asarray(Image.open(boxed / "mask.png")))


@pytest.mark.parametrize(("args", "message"), [
    (["--segment", "SEG"], "--segment segments the box of --roi-box"),
    (["--roi-box", BOX, "--segment-grow", "4"], "--segment-grow widens a segmented ROI"),
    (["--roi-box", BOX, "--mask", "XRAY", "--segment", "SEG"], "give one ROI, not --roi-box and --mask"),
])
def test_simulate_segment_misuse_is_one_line(segmenter_dir: Path, tiny_model_dir: Path, xray: Path, tmp_path: Path,
                                             run_cli, args: list[str], message: str):
    args = [str(segmenter_dir) if a == "SEG" else str(xray) if a == "XRAY" else a for a in args]
    code, _, err = run_cli(["simulate", "--model-dir", str(tiny_model_dir), "--image", str(xray), "--prompt", "x",
                            "--out", str(tmp_path / "run"), *SIMULATE, *args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_demo_segmenter_outlines_held_out_hearts():
    """Dice >= 0.9 against the true heart on phantoms it never saw (jittered boxes, the demo case's 256 px)."""
    from mvg_rt.demo.default import DEMO_SEGMENTER
    from mvg_rt.demo.segmenter_training import held_out_dice
    from mvg_rt.demo.training import DemoTrainingConfig
    from mvg_rt.models.segmenter_folder import load_segmenter

    model, _ = load_segmenter(DEMO_SEGMENTER)
    config = DemoTrainingConfig()
    scores = held_out_dice(model, 20, config.seed, config.segmenter_box_jitter)
    assert scores["dice_mean"] >= 0.9 and scores["dice_min"] >= 0.8, scores
