"""``train-demo`` resumes a stopped training from its per-stage checkpoints, bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mvg_rt.demo.checkpoints import StageCheckpoints
from mvg_rt.demo.training import DemoTrainingConfig, StageBudget, stage_keys, train_demo
from mvg_rt.errors import MvgError
from mvg_rt.models.seine_checkpoint import stored_config

WEIGHT_FILES = ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                "seine/seine.safetensors", "segmenter/model.safetensors")


def _small_config() -> DemoTrainingConfig:
    budget = StageBudget(steps=3, batch=2, lr=1e-3)
    return DemoTrainingConfig(train_images=8, train_clips=4, vae=budget, unet=budget, seine=budget,
                              seine_v=budget, seine_v_fine=budget, segmenter=budget, segmenter_images=8,
                              segmenter_held_out=2)


def _weights(folder: Path) -> dict[str, dict]:
    return {name: load_file(str(folder / name)) for name in WEIGHT_FILES}


class _Stop(Exception):
    pass


def test_a_stopped_training_resumes_to_the_same_weights(tmp_path: Path) -> None:
    config = _small_config()
    whole = tmp_path / "whole"
    whole.mkdir()
    train_demo(config, whole, tmp_path / "whole-checkpoints", lambda _: None)

    def stop_in_seine(message: str) -> None:
        if message.startswith("seine_v step 2/"):
            raise _Stop  # a stop in the middle of a step: the last save is after step 1

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(_Stop):
        train_demo(config, resumed, checkpoints, stop_in_seine, save_every_seconds=0.0)
    keys = stage_keys(config)
    assert sorted(p.name for p in checkpoints.iterdir()) == sorted(
        [f"{stage}-{keys[stage]}.done.pt" for stage in ("vae", "unet", "clips", "seine")]
        + [f"seine_v-{keys['seine_v']}.progress.pt"])
    messages: list[str] = []
    summary = train_demo(config, resumed, checkpoints, messages.append, save_every_seconds=0.0)
    stage_seconds = {stage: summary["timings"][f"{stage}_seconds"] for stage in keys}
    assert all(s is not None and s > 0 for s in stage_seconds.values()), stage_seconds  # earlier runs' work too
    assert any(m.startswith("vae: finished earlier") for m in messages)
    assert any(m.startswith("seine: finished earlier") for m in messages)
    assert any(m.startswith("seine_v: resuming at step 2/3") for m in messages)
    assert stored_config(resumed / "seine" / "seine.safetensors").prediction_type == "v_prediction"
    expected, got = _weights(whole), _weights(resumed)
    for name in WEIGHT_FILES:
        assert expected[name].keys() == got[name].keys()
        assert all((expected[name][k] == got[name][k]).all() for k in expected[name]), name


def test_a_stage_setting_changes_only_its_own_and_later_keys() -> None:
    config = _small_config()
    seine_only = dataclasses.replace(config, seine=StageBudget(steps=4, batch=2, lr=1e-3))
    v_only = stage_keys(dataclasses.replace(config, seine_v_new_layer_lr=1e-4))
    unet_too = dataclasses.replace(config, caption_dropout=0.2)
    base, changed, earlier = stage_keys(config), stage_keys(seine_only), stage_keys(unet_too)
    assert (base["vae"], base["unet"]) == (changed["vae"], changed["unet"]) and base["seine"] != changed["seine"]
    assert all(v_only[s] == base[s] for s in ("vae", "unet", "clips", "seine"))
    assert v_only["seine_v"] != base["seine_v"]
    assert base["vae"] == earlier["vae"] and base["unet"] != earlier["unet"] and base["seine"] != earlier["seine"]


def test_a_damaged_checkpoint_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    keys = stage_keys(_small_config())
    (tmp_path / f"vae-{keys['vae']}.done.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MvgError, match=r"vae-.*\.done\.pt cannot be read .*delete it"):
        StageCheckpoints(tmp_path, keys, lambda _: None).finished("vae")
