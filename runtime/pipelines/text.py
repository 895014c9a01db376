"""Prompt tokenisation and text encoding (CLIP, 77 tokens, padded like diffusers)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mvg_rt.runtime.backends.base import Backend


def tokenize(tokenizer: Any, texts: list[str]) -> Tensor:
    """(len(texts), 77) int64 ids, padded to the tokenizer's max length and truncated."""
    return tokenizer(
        texts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(torch.int64)


def encode_texts(backend: Backend, tokenizer: Any, texts: list[str]) -> Tensor:
    """Embeddings of ``texts`` in order, on the backend's device."""
    return backend.encode_text(tokenize(tokenizer, texts).to(backend.device))
