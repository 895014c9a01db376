"""Setting up and running the two pipelines: the one place that picks a loop and the one clip loop.

Every job (simulate, check, bench) opens PIE and transition sessions here, so the
choice between the eager loops and the static-buffer step loops (CUDA-graph replays
on a GPU) is made in one place, from the caller's ``graphed`` flag (the runtime's
``--cuda-graphs``). The round loop is :func:`mvg_rt.runtime.pipelines.pie.run_pie`;
the clip loop is :func:`run_transitions`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mvg_rt.runtime.backends.base import Backend
from mvg_rt.runtime.pipelines.graphed_loops import GraphedPieSession, GraphedTransitionSampler
from mvg_rt.runtime.pipelines.model_info import ModelInfo
from mvg_rt.runtime.pipelines.pie import PieSession, PieSettings
from mvg_rt.runtime.pipelines.roi import latent_mask
from mvg_rt.runtime.pipelines.transition import ClipStepCallback, TransitionSampler, TransitionSettings, join_clips


def pie_session(backend: Backend, model: ModelInfo, settings: PieSettings, original: np.ndarray,
                roi_pixels: np.ndarray, prompt: str, negative_prompt: str = "", graphed: bool = False,
                stepper: str = "auto") -> PieSession:
    """A PIE session on ``original`` ((H, W, 3) uint8) with the ROI ``roi_pixels`` ((H, W) uint8 gray).

    ``stepper`` is :class:`PieSession`'s (the bench forces ``scheduler`` to measure the table step's gain).
    """
    mask = latent_mask(torch.from_numpy(roi_pixels), model.vae_scale_factor, model.latent_channels)
    session_type = GraphedPieSession if graphed else PieSession
    return session_type(backend, model, settings, torch.from_numpy(original).to(backend.device), mask, prompt,
                        negative_prompt, stepper=stepper)


def transition_sampler(backend: Backend, model: ModelInfo, settings: TransitionSettings, prompt: str,
                       graphed: bool = False) -> TransitionSampler:
    sampler_type = GraphedTransitionSampler if graphed else TransitionSampler
    return sampler_type(backend, model, settings, prompt)


def run_transitions(sampler: TransitionSampler, states: list[Tensor], roi: Tensor, generator: torch.Generator,
                    on_step: ClipStepCallback | None = None,
                    on_clip: Callable[[int], None] | None = None) -> Tensor:
    """One clip per pair of consecutive states ((H, W, 3) uint8), joined: N*(K-1)+1 frames on the CPU.

    ``roi`` is (H, W) in [0, 1]; the clips draw from ``generator`` in clip order.
    """
    clips = []
    for index, (start, end) in enumerate(zip(states[:-1], states[1:]), start=1):
        clips.append(sampler.clip(start, end, roi, generator, index, on_step).cpu())
        if on_clip is not None:
            on_clip(index)
    return join_clips(clips)
