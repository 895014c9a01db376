"""ROI arithmetic against hand-computed small tensors."""

from __future__ import annotations

import torch

from mvg_rt.runtime.pipelines.pie import OutsideRoiReplacement
from mvg_rt.runtime.pipelines.roi import blend_with_original, composite_transition, latent_mask


def test_eq6_blend_by_hand():
    latents = torch.tensor([[[[2.0, 2.0]]]])
    original = torch.tensor([[[[1.0, 1.0]]]])
    mask = torch.tensor([[[[0.0, 1.0]]]])
    out = blend_with_original(latents, original, mask, beta1=0.25, beta2=0.5)
    # outside: (2-1)*0.25+1 = 1.25; inside: (2-1)*0.5+1 = 1.5
    assert torch.allclose(out, torch.tensor([[[[1.25, 1.5]]]]))
    soft = blend_with_original(latents, original, torch.full_like(mask, 0.5), beta1=0.25, beta2=0.5)
    assert torch.allclose(soft, torch.full_like(latents, 0.5 * 1.25 + 0.5 * 1.5))


def test_in_loop_replacement_by_hand():
    """Step 0 keeps the latents; every later step takes the reference outside the ROI (soft at its edge)."""
    latents = torch.tensor([[[[5.0, 5.0, 5.0]]]])
    references = torch.tensor([[[[9.0, 9.0, 9.0]]], [[[1.0, 1.0, 1.0]]]])
    mask = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    replace = OutsideRoiReplacement(mask, 2, (1, 1, 1, 3), torch.device("cpu"))
    replace.load(references)
    assert torch.equal(replace(latents, torch.tensor([0])), latents)
    assert torch.allclose(replace(latents, torch.tensor([1])), torch.tensor([[[[1.0, 2.0, 5.0]]]]))


def test_mask_resize_by_hand():
    """16x16 -> 2x2 at scale 8: each cell averages pixels (8i+3, 8i+4) x (8j+3, 8j+4), rounded half up."""
    mask = torch.zeros(16, 16, dtype=torch.uint8)
    mask[3, 3], mask[3, 4], mask[4, 3], mask[4, 4] = 255, 255, 0, 1  # cell (0,0): (255+255+0+1)/4 = 127.75 -> 128
    mask[11:13, 3:5] = 10  # cell (1,0): 10
    mask[3:5, 11:13] = 0
    mask[3, 11] = 2  # cell (0,1): 2/4 = 0.5 -> rounds half up to 1
    mask[0:3, 0:3] = 255  # outside the sampled pixels: no influence (no antialiasing)
    out = latent_mask(mask, scale=8, channels=4)
    assert out.shape == (1, 4, 2, 2) and out.is_contiguous()
    assert torch.allclose(out[0, 0] * 255, torch.tensor([[128.0, 1.0], [10.0, 0.0]]))
    assert all(torch.equal(out[0, c], out[0, 0]) for c in range(4))  # one ROI for every latent channel


def test_eq10_outside_is_exact_endpoint_mean():
    frames = torch.rand(5, 4, 4, 3)
    start, end = torch.rand(4, 4, 3), torch.rand(4, 4, 3)
    mask = torch.zeros(4, 4)
    mask[1:3, 1:3] = 1.0
    mask[0, 0] = 0.5
    out = composite_transition(frames, start, end, mask)
    mean = (start + end) / 2
    outside = mask == 0
    assert torch.equal(out[:, outside], mean[outside].expand(5, -1, -1))
    assert torch.equal(out[:, 1:3, 1:3], frames[:, 1:3, 1:3])
    assert torch.allclose(out[:, 0, 0], 0.5 * frames[:, 0, 0] + 0.5 * mean[0, 0])
