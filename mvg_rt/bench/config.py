"""What one ``mvg-rt bench`` run measures, as typed settings built once at the CLI edge. A *variant* is a
:class:`RuntimeSpec` (on a CPU ``torch``, the reference, and ``ort``; on CUDA every backend in FP16, plus
CUDA-graph twins); a GPU variant without a GPU is a one-line "needs CUDA" error before anything is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mvg_rt.components import COMPONENTS
from mvg_rt.errors import MvgError
from mvg_rt.runtime.factory import BACKENDS, RuntimeSpec
from mvg_rt.runtime.pipelines.pie import PieSettings
from mvg_rt.runtime.pipelines.transition import TransitionSettings

STEPPERS = ("auto", "scheduler")  # PieSession's: the table step where the scheduler allows it, or diffusers' step


@dataclass(frozen=True)
class E2ESettings:
    """The end-to-end rows' settings: one PIE round (img2img), and a reduced simulation."""

    resolution: int = 256
    rounds: int = 2
    steps: int = 20
    strength: float = 0.6
    guidance: float = 7.5
    beta1: float = 0.01
    beta2: float = 0.75
    seed: int = 0
    frames: int = 4
    transition_steps: int = 3
    transition_sampler: str = "ddpm"
    transition_guidance: float = 8.0
    repeat: int = 1
    prompt: str = "severe cardiomegaly"
    negative_prompt: str = ""

    @property
    def denoising_steps(self) -> int:
        return min(int(self.steps * self.strength), self.steps)

    def pie(self, rounds: int | None = None, beta2: float | None = None) -> PieSettings:
        return PieSettings(rounds=rounds or self.rounds, strength=self.strength, steps=self.steps,
                           guidance_scale=self.guidance, beta1=self.beta1,
                           beta2=self.beta2 if beta2 is None else beta2)

    def transition(self) -> TransitionSettings:
        return TransitionSettings(frames=self.frames, steps=self.transition_steps, sampler=self.transition_sampler,
                                  guidance_scale=self.transition_guidance, negative_prompt=self.negative_prompt)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"denoising_steps_per_round": self.denoising_steps}


@dataclass(frozen=True)
class BenchConfig:
    backends: tuple[str, ...] = ("torch", "ort")
    device: str = "cpu"
    cuda_graphs: bool = False
    resolution: int = 256
    frames: int = 16  # SEINE frames of the seine component row
    components: tuple[str, ...] = ("text_encoder", "vae_encoder", "vae_decoder", "unet", "seine")
    e2e: bool = False
    peers: bool = False
    repeat: int = 5
    warmup: int = 1
    row_budget_s: float | None = 60.0  # stop timing a component after >= 2 calls once they took this long
    model_dir: Path | None = None
    size: str = "sd14"
    seed: int = 0
    engines: Path | None = None
    cache: Path | None = None
    out: Path = Path("runs/bench")
    in_process: bool | None = None  # None: a fresh process per variant unless --size tiny
    steppers: tuple[str, ...] = ("auto",)
    e2e_settings: E2ESettings = field(default_factory=E2ESettings)
    transitions: bool = True
    overhead_repeat: int = 5
    profile_misses: bool = True

    def __post_init__(self) -> None:
        for name, given, known in (("--components", self.components, COMPONENTS), ("--steppers", self.steppers,
                                   STEPPERS), ("--backend", self.backends, BACKENDS)):
            unknown = [x for x in given if x not in known]
            if unknown:
                raise MvgError(f"unknown {name} {', '.join(unknown)}: choose from {', '.join(known)}")
        if self.resolution % 64:
            raise MvgError(f"--resolution must be a multiple of 64 (the UNet downsamples latents 3 times), "
                           f"got {self.resolution}")
        if self.repeat < 1 or self.warmup < 0:
            raise MvgError("--repeat must be >= 1 and --warmup >= 0")
        if self.frames < 3:
            raise MvgError(f"--frames must be at least 3, got {self.frames}")
        if self.e2e_settings.denoising_steps < 2:
            raise MvgError("--steps x --strength must leave at least 2 denoising steps")
        self.variants()  # the "needs CUDA" errors, before anything is built

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def isolate(self) -> bool:
        return not self.in_process if self.in_process is not None else self.size != "tiny" or bool(self.model_dir)

    def variants(self) -> list[RuntimeSpec]:
        """The variants as specs without their model paths (the runner fills them in once models exist)."""
        for what, asked in (("--cuda-graphs", self.cuda_graphs), ("--backend trt (TensorRT)", "trt" in self.backends),
                            (f"--device {self.device}", self.cuda)):
            if asked and not self.cuda:
                raise MvgError(f"{what} needs CUDA: pass --device cuda on a machine with an NVIDIA GPU")
            if asked and not torch.cuda.is_available():
                raise MvgError(f"{what} needs CUDA, and no CUDA device is visible to PyTorch here; run the bench on a "
                               "GPU machine or drop it")
        precision = "fp16" if self.cuda else "fp32"
        return [RuntimeSpec(backend, self.device, precision, graphs) for backend in self.backends
                for graphs in ((False, True) if self.cuda_graphs else (False,))]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"e2e_settings": self.e2e_settings.to_dict(), "isolate": self.isolate}
