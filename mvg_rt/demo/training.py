"""Training the demo model on chest X-ray phantoms, on a CPU, in about two hours.

The demo model has the real architecture families (CLIP text model + CLIP BPE
tokenizer, AutoencoderKL, UNet2DConditionModel, SEINE 3D denoiser) at toy widths,
so everything mvg-rt does to SD 1.4 + SEINE (PIE, transitions, export, engines)
runs on it unchanged, and its outputs can be checked against the phantoms' known
disease state. Stages, each seeded and with a step budget:

1. VAE on random 64x64 crops of 128x128 phantoms (it is fully convolutional, and
   crops cost a quarter of full images); L1 reconstruction + a small KL term, then
   the latent scaling factor is set to 1 / std of the latents, as SD 1.x's 0.18215 is.
2. Text encoder + UNet jointly, epsilon prediction on SD 1.4's noise schedule, with
   report-style captions dropped 10% of the time so classifier-free guidance works.
3. SEINE, initialised from the trained UNet by SEINE's own recipe, on severity
   sweeps of one patient (the first and last frames given, as SEINE's "onelast1"),
   on guided-diffusion's linear schedule (epsilon, then v prediction), captions with SEINE's
   "smooth transition." suffix. Half the clips move a little (as consecutive PIE
   states do), half are re-textured inside the heart ROI towards their end (as every
   PIE round redraws the texture there), and half of the noise levels are drawn from
   the noisier half of the schedule, where only the conditioning frames tell the
   model what to draw; there the epsilon loss is weighted up by 1 / SNR (capped),
   since an epsilon error at high noise is a large error in the clean frames that
   plain epsilon MSE hardly charges for. SEINE's conditioning channels and temporal
   layers start at zero (they learn at a higher rate), and the first demo SEINE
   (1,500 steps at batch 4, uniform noise levels, plain epsilon MSE, EMA 0.999) had
   not learnt to use them at all: it drew the prompt's prior instead of a transition.
   Two more phases then retrain SEINE's output as v prediction (see
   :func:`seine_phases`), so that sampling from pure noise does not drift.
4. The segmenter (``segmenter/``, a SAM-architecture ``SamModel``) that outlines the heart
   inside a box, as MedSAM makes the paper's ROI (:mod:`mvg_rt.demo.segmenter_training`).

Every stage checkpoints (:mod:`mvg_rt.demo.checkpoints`): a stopped training resumes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mvg_rt.demo.checkpoints import SAVE_EVERY_SECONDS, GeneratorState, StageCheckpoints, fingerprint
from mvg_rt.demo.phantom import DiseaseState, PatientAnatomy, caption_for, progression_clip, sample_dataset
from mvg_rt.runtime.pipelines.gaussian_schedule import linear_alphas_cumprod
from mvg_rt.runtime.pipelines.transition import known_frame_mask, transition_prompt

Log = Callable[[str], None]
CONFIGS = resources.files("mvg_rt.demo") / "configs"


@dataclass(frozen=True)
class StageBudget:
    steps: int
    batch: int
    lr: float


@dataclass(frozen=True)
class DemoTrainingConfig:
    """Everything that decides the demo weights (written next to them as train_config.json)."""

    seed: int = 0
    resolution: int = 128
    train_images: int = 4000
    clip_frames: int = 8
    train_clips: int = 2000
    near_clip_fraction: float = 0.5  # clips whose end state moves at most near_clip_change from the start
    near_clip_change: float = 0.3
    retexture_fraction: float = 0.5  # clips re-textured inside the heart ROI towards their end
    vae_crop: int = 64
    vae: StageBudget = StageBudget(steps=2500, batch=8, lr=1e-3)
    unet: StageBudget = StageBudget(steps=4000, batch=32, lr=5e-4)
    seine: StageBudget = StageBudget(steps=2000, batch=8, lr=3e-4)
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seine_new_layer_lr: float = 1e-3  # the layers SEINE adds start at zero: they learn faster than the copied ones
    seine_ema_decay: float = 0.995  # a 0.999 EMA over a few thousand steps lags far behind what was learnt
    seine_high_noise_fraction: float = 0.5  # noise levels drawn from the noisier half of the schedule
    seine_max_loss_weight: float = 50.0  # the epsilon loss weighted by 1 / SNR, between 1 and this
    seine_v: StageBudget = StageBudget(steps=3000, batch=8, lr=2e-4)
    seine_v_new_layer_lr: float = 5e-4
    seine_v_high_noise_fraction: float = 0.5  # as the main phase: half of the levels from [500, 1000)
    seine_v_fine: StageBudget = StageBudget(steps=1500, batch=8, lr=1e-4)  # the v phase again, at a lower rate
    seine_v_fine_new_layer_lr: float = 2.5e-4
    segmenter: StageBudget = StageBudget(steps=2500, batch=16, lr=1e-3)  # see demo.segmenter_training
    segmenter_images: int = 2000
    segmenter_held_out: int = 100
    segmenter_box_jitter: float = 0.03  # each box side moves by up to this share of the image
    segmenter_config: dict[str, Any] = field(default_factory=lambda: config_json("demo_segmenter"))
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def scaled(self, factor: float) -> DemoTrainingConfig:
        """The same recipe with every step budget multiplied by ``factor`` (quick runs, tests)."""
        scale = lambda b: StageBudget(max(1, int(b.steps * factor)), b.batch, b.lr)  # noqa: E731
        return DemoTrainingConfig(**{**asdict(self), "vae": scale(self.vae), "unet": scale(self.unet),
                                     "seine": scale(self.seine), "seine_v": scale(self.seine_v),
                                     "seine_v_fine": scale(self.seine_v_fine), "segmenter": scale(self.segmenter)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The settings each stage reads, in stage order; a stage's checkpoint key covers its own and the earlier ones'.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "vae": ("seed", "resolution", "train_images", "vae_crop", "vae", "kl_weight"),
    "unet": ("unet", "caption_dropout", "ema_decay"),
    "clips": ("clip_frames", "train_clips", "near_clip_fraction", "near_clip_change", "retexture_fraction"),
    "seine": ("seine", "seine_new_layer_lr", "seine_ema_decay", "seine_high_noise_fraction", "seine_max_loss_weight",
              "extra"),
    "seine_v": ("seine_v", "seine_v_new_layer_lr", "seine_v_high_noise_fraction"),
    "seine_v_fine": ("seine_v_fine", "seine_v_fine_new_layer_lr"),
    # last, so adding it kept every earlier stage's key (and checkpoints) as they were
    "segmenter": ("segmenter", "segmenter_images", "segmenter_held_out", "segmenter_box_jitter", "segmenter_config"),
}


def stage_keys(config: DemoTrainingConfig) -> dict[str, str]:
    """Stage -> fingerprint of the settings that decide its result."""
    settings, used, keys = config.to_dict(), [], {}
    for stage, names in STAGE_SETTINGS.items():
        used += names
        keys[stage] = fingerprint({name: settings[name] for name in used})
    return keys


def config_json(name: str) -> dict[str, Any]:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def to_model_range(images: np.ndarray) -> Tensor:
    """(N, H, W) uint8 grey -> (N, 3, H, W) in [-1, 1] (the SD pipelines' RGB input)."""
    grey = torch.from_numpy(images).float() / 127.5 - 1.0
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


class Ema:
    """Exponential moving average of a module's weights (what gets shipped)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module, self.decay, self.updates = copy.deepcopy(module).eval(), decay, 0
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))  # warm-up
        for ema_p, p in zip(self.module.parameters(), module.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def cosine_lr(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 100) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def every(step: int, steps: int, count: int = 10) -> bool:
    return step == steps - 1 or step % max(1, steps // count) == 0


# ----------------------------------------------------------------------------- data


def phantom_dataset(config: DemoTrainingConfig) -> tuple[np.ndarray, list[str]]:
    """(N, R, R) uint8 phantoms and their report-style captions."""
    images, captions = [], []
    for sample in sample_dataset(config.train_images, config.seed, config.resolution):
        images.append(sample.image)
        captions.append(sample.caption)
    return np.stack(images), captions


def _nearby(state: DiseaseState, change: float, rng: np.random.Generator) -> DiseaseState:
    """A state at most ``change`` away in every severity; an absent effusion stays absent."""
    moved = lambda value: float(np.clip(value + rng.uniform(-change, change), 0.0, 1.0))  # noqa: E731
    return DiseaseState(moved(state.cardiomegaly),
                        moved(state.effusion_left) if state.effusion_left else 0.0,
                        moved(state.effusion_right) if state.effusion_right else 0.0)


def phantom_clips(config: DemoTrainingConfig) -> tuple[np.ndarray, list[str]]:
    """(M, K, R, R) uint8 severity sweeps of one patient each, and the caption of the end state."""
    rng = np.random.default_rng(config.seed + 1)
    clips, captions = [], []
    for _ in range(config.train_clips):
        anatomy = PatientAnatomy.sample(rng)
        start = DiseaseState.sample(rng)
        near = rng.uniform() < config.near_clip_fraction
        end = _nearby(start, config.near_clip_change, rng) if near else DiseaseState.sample(rng)
        texture = int(rng.integers(0, 2**31 - 1)) if rng.uniform() < config.retexture_fraction else None
        clips.append(progression_clip(anatomy, start, end, config.clip_frames, config.resolution,
                                      end_texture_seed=texture))
        captions.append(caption_for(end))
    return np.stack(clips), captions


# ----------------------------------------------------------------------------- stage 1: VAE


def _demo_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(config_json("demo_vae"))


def train_vae(images: np.ndarray, config: DemoTrainingConfig, checkpoints: StageCheckpoints, log: Log) -> Any:
    done = checkpoints.finished("vae")
    if done is not None:
        vae = _demo_vae()
        vae.load_state_dict(done["vae"])
        vae.register_to_config(scaling_factor=float(done["scaling_factor"]))
        return vae.eval()
    torch.manual_seed(config.seed)
    vae = _demo_vae()
    budget, crop = config.vae, config.vae_crop
    optimizer = torch.optim.AdamW(vae.parameters(), lr=budget.lr, weight_decay=0.0)
    schedule = cosine_lr(optimizer, budget.steps)
    generator = torch.Generator().manual_seed(config.seed)
    data = to_model_range(images)
    started = time.perf_counter()
    state = {"vae": vae, "optimizer": optimizer, "schedule": schedule, "generator": GeneratorState(generator)}
    for step in checkpoints.steps("vae", budget.steps, state):
        index = torch.randint(len(data), (budget.batch,), generator=generator)
        top, left = torch.randint(0, data.shape[-1] - crop + 1, (2,), generator=generator).tolist()
        batch = data[index, :, top : top + crop, left : left + crop]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = (recon - batch).abs().mean() + config.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if every(step, budget.steps):
            log(f"vae step {step + 1}/{budget.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(data[i : i + 64]).latent_dist.mean for i in range(0, min(len(data), 512), 64)])
    vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    checkpoints.finish("vae", {"vae": vae.state_dict(), "scaling_factor": float(vae.config.scaling_factor)})
    return vae


@torch.no_grad()
def encode_moments(vae: Any, images: Tensor, batch: int = 64) -> Tensor:
    """Posterior (mean, logvar) moments of every image, in model range."""
    return torch.cat([vae.encode(images[i : i + batch]).latent_dist.parameters for i in range(0, len(images), batch)])


def sample_latents(moments: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    mean, logvar = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator)
    return (mean + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise) * scale


def tokenize(tokenizer: Any, texts: list[str]) -> Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def _drop_captions(captions: list[str], probability: float, generator: torch.Generator) -> list[str]:
    keep = torch.rand(len(captions), generator=generator) >= probability
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


# ----------------------------------------------------------------------------- stage 2: text encoder + UNet


def _demo_text_unet(tokenizer: Any) -> tuple[Any, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = config_json("demo_text_encoder") | {
        "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    return CLIPTextModel(CLIPTextConfig(**text_config)), UNet2DConditionModel.from_config(config_json("demo_unet"))


def train_text_unet(images: np.ndarray, captions: list[str], vae: Any, tokenizer: Any,
                    config: DemoTrainingConfig, checkpoints: StageCheckpoints, log: Log) -> tuple[Any, Any]:
    from diffusers import DDPMScheduler

    from mvg_rt.models.builders import builtin_config

    done = checkpoints.finished("unet")
    if done is not None:
        text_encoder, unet = _demo_text_unet(tokenizer)
        text_encoder.load_state_dict(done["text_encoder"])
        unet.load_state_dict(done["unet"])
        return text_encoder.eval(), unet.eval()
    scale = float(vae.config.scaling_factor)
    moments = encode_moments(vae, to_model_range(images))
    torch.manual_seed(config.seed + 2)
    text_encoder, unet = _demo_text_unet(tokenizer)
    noise_schedule = DDPMScheduler.from_config(builtin_config("sd14_scheduler"))
    parameters = list(text_encoder.parameters()) + list(unet.parameters())
    budget = config.unet
    optimizer = torch.optim.AdamW(parameters, lr=budget.lr, weight_decay=1e-2)
    schedule = cosine_lr(optimizer, budget.steps)
    ema_text, ema_unet = Ema(text_encoder, config.ema_decay), Ema(unet, config.ema_decay)
    generator = torch.Generator().manual_seed(config.seed + 3)
    started = time.perf_counter()
    state = {"text_encoder": text_encoder, "unet": unet, "ema_text": ema_text, "ema_unet": ema_unet,
             "optimizer": optimizer, "schedule": schedule, "generator": GeneratorState(generator)}
    for step in checkpoints.steps("unet", budget.steps, state):
        index = torch.randint(len(moments), (budget.batch,), generator=generator)
        latents = sample_latents(moments[index], scale, generator)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (budget.batch,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        texts = _drop_captions([captions[i] for i in index.tolist()], config.caption_dropout, generator)
        embeddings = text_encoder(tokenize(tokenizer, texts)).last_hidden_state
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=embeddings).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema_text.update(text_encoder)
        ema_unet.update(unet)
        if every(step, budget.steps):
            log(f"unet step {step + 1}/{budget.steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f}s)")
    checkpoints.finish("unet", {"text_encoder": ema_text.module.state_dict(), "unet": ema_unet.module.state_dict()})
    return ema_text.module, ema_unet.module


# ----------------------------------------------------------------------------- stage 3: SEINE


HIGH_NOISE_LEVEL = 500  # the noisier half of the schedule, where only the conditioning says what to draw


def _noise_levels(batch: int, levels: int, high_fraction: float, generator: torch.Generator) -> Tensor:
    """Timesteps: uniform, except a ``high_fraction`` share drawn from [HIGH_NOISE_LEVEL, levels) only."""
    uniform = torch.randint(0, levels, (batch,), generator=generator)
    high = torch.randint(HIGH_NOISE_LEVEL, levels, (batch,), generator=generator)
    return torch.where(torch.rand(batch, generator=generator) < high_fraction, high, uniform)


def _clip_moments(clips: np.ndarray, vae: Any, checkpoints: StageCheckpoints) -> Tensor:
    """(M, K, 8, h, w) posterior moments of every clip frame: encoded once, then kept with the checkpoints
    (encoding 16,000 frames takes minutes on two cores, and a resumed training needs them again)."""
    done = checkpoints.finished("clips")
    if done is not None:
        return done["moments"]
    clock = time.perf_counter()
    moments = encode_moments(vae, to_model_range(clips.reshape(-1, *clips.shape[2:])))
    moments = moments.view(*clips.shape[:2], *moments.shape[1:])
    checkpoints.finish("clips", {"moments": moments}, seconds=time.perf_counter() - clock)
    return moments


@dataclass(frozen=True)
class SeinePhase:
    """One phase of SEINE training: its budget, the noise levels it draws and what the network predicts."""

    stage: str  # checkpoint stage name
    budget: StageBudget
    new_layer_lr: float
    high_noise_fraction: float  # the share of the batch drawn from [500, 1000); the rest uniform
    max_loss_weight: float  # the loss weighted by 1 / SNR, clamped to [1, max_loss_weight] (1: unweighted)
    seed_offset: int
    prediction_type: str  # "epsilon" or "v_prediction" (what the network's output is trained to be)


def seine_phases(config: DemoTrainingConfig) -> tuple[SeinePhase, ...]:
    """(main, v, v at a lower rate). The main phase teaches SEINE to use its conditioning in the UNet's own epsilon
    parametrization; the v phase then retrains the output as v = sqrt(abar) eps - sqrt(1 - abar) x0, as
    SD 2 was fine-tuned from epsilon to v.

    Why v: sampling starts from pure noise, where an epsilon model's clean clip is
    ``(x - sqrt(1 - abar) eps) / sqrt(abar)`` with ``1 / sqrt(abar(999)) ~ 160`` on SEINE's linear
    schedule, so an epsilon error of a few thousandths is a clip error of about one latent unit (tens
    of grey levels) that every later step inherits. After the main phase, the clip each seed drew
    depended on its noise far more than on the guidance or the prompt (ROI-mean excursion 2-53 grey
    levels over three seeds, the same at guidance 1, 3 and 8), and two further epsilon phases that
    weighted the noisy levels by up to 1 / SNR did not change that (issue 19's closing note). A v
    model predicts the clean clip at the top of the schedule directly (v -> -x0 as abar -> 0), with no
    amplification; the sampler folds v back into epsilon in its step tables
    (:meth:`~mvg_rt.runtime.pipelines.gaussian_schedule.ClipSchedule.over_model_output`)."""
    return (SeinePhase("seine", config.seine, config.seine_new_layer_lr, config.seine_high_noise_fraction,
                       config.seine_max_loss_weight, 5, "epsilon"),
            SeinePhase("seine_v", config.seine_v, config.seine_v_new_layer_lr, config.seine_v_high_noise_fraction,
                       1.0, 6, "v_prediction"),
            # The same seed stream as the v phase: this phase was first run as that phase continued (issue 19).
            SeinePhase("seine_v_fine", config.seine_v_fine, config.seine_v_fine_new_layer_lr,
                       config.seine_v_high_noise_fraction, 1.0, 6, "v_prediction"))


@dataclass
class _ClipData:
    moments: Tensor  # (M, K, 8, h, w) posterior moments of every frame
    blank: Tensor  # (1, 8, h, w) of the zero image (SEINE's masked frames)
    captions: list[str]
    embeddings: dict[str, Tensor]  # caption -> text embedding of the transition prompt
    scale: float


def _seine_phase(seine: Any, data: _ClipData, phase: SeinePhase, config: DemoTrainingConfig,
                 checkpoints: StageCheckpoints, log: Log) -> Any:
    """Train ``seine`` for one phase; returns its EMA weights' module (what is shipped)."""
    from mvg_rt.models.seine_checkpoint import CONV_IN, is_temporal

    seine.train()
    count, frames = data.moments.shape[:2]
    alphas_cumprod = torch.from_numpy(linear_alphas_cumprod()).float()
    frame_mask = known_frame_mask(frames).view(1, 1, frames, 1, 1)
    loss_weight = (1.0 / (alphas_cumprod / (1.0 - alphas_cumprod))).clamp(1.0, phase.max_loss_weight)
    budget = phase.budget
    new = [p for name, p in seine.named_parameters() if is_temporal(name) or name.startswith(CONV_IN.rsplit(".", 1)[0])]
    old = [p for name, p in seine.named_parameters() if not any(p is q for q in new)]
    optimizer = torch.optim.AdamW([{"params": old}, {"params": new, "lr": phase.new_layer_lr}],
                                  lr=budget.lr, weight_decay=1e-2)
    schedule = cosine_lr(optimizer, budget.steps)
    ema = Ema(seine, config.seine_ema_decay)
    generator = torch.Generator().manual_seed(config.seed + phase.seed_offset)
    started = time.perf_counter()
    state = {"seine": seine, "ema": ema, "optimizer": optimizer, "schedule": schedule,
             "generator": GeneratorState(generator)}
    for step in checkpoints.steps(phase.stage, budget.steps, state):
        index = torch.randint(count, (budget.batch,), generator=generator)
        video = sample_latents(data.moments[index].flatten(0, 1), data.scale, generator)
        video = video.view(budget.batch, frames, *video.shape[1:]).transpose(1, 2)  # (B, C, K, h, w)
        blank = sample_latents(data.blank.expand(budget.batch * (frames - 2), -1, -1, -1), data.scale, generator)
        blank = blank.view(budget.batch, frames - 2, *blank.shape[1:]).transpose(1, 2)
        masked = torch.cat([video[:, :, :1], blank, video[:, :, -1:]], dim=2)
        noise = torch.randn(video.shape, generator=generator)
        timesteps = _noise_levels(budget.batch, len(alphas_cumprod), phase.high_noise_fraction, generator)
        abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1, 1)
        noisy = abar.sqrt() * video + (1 - abar).sqrt() * noise
        condition = torch.cat([frame_mask.expand(budget.batch, 1, -1, *video.shape[-2:]), masked], dim=1)
        texts = _drop_captions([data.captions[i] for i in index.tolist()], config.caption_dropout, generator)
        embeddings = torch.stack([data.embeddings[t] for t in texts])
        prediction = seine(torch.cat([noisy, condition], dim=1), timesteps.float(), embeddings)
        target = noise if phase.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * video
        loss = (loss_weight[timesteps] * ((prediction - target) ** 2).mean(dim=(1, 2, 3, 4))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(seine.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update(seine)
        if every(step, budget.steps, count=30):
            log(f"{phase.stage} step {step + 1}/{budget.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - started:.0f}s)")
    checkpoints.finish(phase.stage, {"seine": ema.module.state_dict()})
    return ema.module.eval()


def train_seine(clips: np.ndarray, captions: list[str], vae: Any, text_encoder: Any, unet: Any, tokenizer: Any,
                config: DemoTrainingConfig, checkpoints: StageCheckpoints, log: Log) -> Any:
    from mvg_rt.models.seine_checkpoint import seine_from_unet2d
    from mvg_rt.models.seine_unet import SeineConfig, SeineUNet3D

    seine_config = SeineConfig.from_dict(config_json("demo_seine"))
    phases = seine_phases(config)
    done = [checkpoints.finished(phase.stage) for phase in phases]
    if done[-1] is not None:
        seine = SeineUNet3D(replace(seine_config, prediction_type=phases[-1].prediction_type))
        seine.load_state_dict(done[-1]["seine"])
        return seine.eval()
    with torch.no_grad():
        embeddings = {text: text_encoder(tokenize(tokenizer, [transition_prompt(text, "smooth transition.")
                                                              if text else ""])).last_hidden_state[0]
                      for text in sorted(set(captions)) + [""]}
    data = _ClipData(_clip_moments(clips, vae, checkpoints),
                     encode_moments(vae, torch.zeros(1, 3, clips.shape[-2], clips.shape[-1])), captions, embeddings,
                     float(vae.config.scaling_factor))
    torch.manual_seed(config.seed + 4)
    seine = seine_from_unet2d(unet, seine_config)
    for phase, result in zip(phases, done):  # each phase starts from the previous one's EMA weights
        if result is None:
            result = {"seine": _seine_phase(seine, data, phase, config, checkpoints, log).state_dict()}
        seine.load_state_dict(result["seine"])
        seine.config = replace(seine.config, prediction_type=phase.prediction_type)
    return seine.eval()


# ----------------------------------------------------------------------------- all stages


def train_demo(config: DemoTrainingConfig, out_dir: Path, checkpoint_dir: Path, log: Log,
               save_every_seconds: float = SAVE_EVERY_SECONDS) -> dict[str, Any]:
    """Train every stage (resuming from ``checkpoint_dir``) and write a diffusers-format folder (+ seine/)."""
    from transformers import CLIPTokenizer

    from mvg_rt.models.builders import SHIPPED_TOKENIZER, builtin_config, write_model_folder
    from mvg_rt.models.diffusers_folder import DiffusersModels
    from mvg_rt.models.segmenter_folder import SEGMENTER_SUBFOLDER

    torch.set_num_threads(config.threads)
    checkpoints = StageCheckpoints(checkpoint_dir, stage_keys(config), log, save_every_seconds)
    clock = time.perf_counter()
    tokenizer = CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), local_files_only=True)
    images, captions = phantom_dataset(config)
    timings: dict[str, float | None] = {"data_seconds": time.perf_counter() - clock}
    log(f"{len(images)} phantoms ({timings['data_seconds']:.0f}s)")

    vae = train_vae(images, config, checkpoints, log)
    scale = float(vae.config.scaling_factor)
    text_encoder, unet = train_text_unet(images, captions, vae, tokenizer, config, checkpoints, log)

    clock = time.perf_counter()
    clips, clip_captions = phantom_clips(config)
    timings["clip_render_seconds"] = time.perf_counter() - clock
    log(f"{len(clips)} clips of {config.clip_frames} frames ({timings['clip_render_seconds']:.0f}s)")
    seine = train_seine(clips, clip_captions, vae, text_encoder, unet, tokenizer, config, checkpoints, log)
    from mvg_rt.demo.segmenter_training import train_segmenter  # it imports this module's helpers

    segmenter, segmenter_metrics = train_segmenter(config, checkpoints, log)

    models = DiffusersModels(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), unet=unet.eval(),
                             scheduler_config=builtin_config("sd14_scheduler"))
    write_model_folder(models, out_dir, seine=seine)
    segmenter.save_pretrained(out_dir / SEGMENTER_SUBFOLDER)  # a SamModel folder, as MedSAM ships
    # Each stage's seconds of work over every run that contributed to it (kept in its checkpoints).
    timings |= {f"{stage}_seconds": checkpoints.seconds.get(stage) for stage in STAGE_SETTINGS}
    timings["total_seconds"] = sum(v for v in timings.values() if v is not None)
    (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    return {"timings": {k: None if v is None else round(v, 1) for k, v in timings.items()},
            "vae_scaling_factor": scale, "segmenter": segmenter_metrics}
