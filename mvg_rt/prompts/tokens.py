"""How many CLIP tokens a prompt takes: one count for the job's truncation notice and the recaptioners' budget.

CLIP's text encoder reads ``model_max_length`` tokens (77), its start and end tokens included; the pipelines
truncate there, so words past it never reach the model. A prompt made from a report is counted with the
tokenizer the project ships (``mvg_rt/models/tokenizer``: CLIP's BPE with 310 merges, learned on medical
phrases) before any model is open. It cuts a word into at least as many pieces as SD 1.4's 49,408-token
vocabulary does in practice (``basal cell carcinoma``: 11 tokens here, 4 there), so a prompt that fits here
fits the real model; ``simulate`` counts again with the model's own tokenizer and warns if it does not.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


def prompt_truncation(tokenizer: Any, prompt: str) -> dict[str, Any] | None:
    """None if CLIP's text encoder reads the whole prompt, else how many tokens it has and what is kept."""
    limit = int(tokenizer.model_max_length)
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    return {"tokens": len(ids), "limit": limit, "kept": tokenizer.decode(ids[1 : limit - 1]).strip()}


@lru_cache(maxsize=1)
def shipped_tokenizer() -> Any:
    """The project's CLIP tokenizer (loaded once; transformers and the models package load only when needed)."""
    from transformers import CLIPTokenizer

    from mvg_rt.models.builders import SHIPPED_TOKENIZER

    return CLIPTokenizer.from_pretrained(str(SHIPPED_TOKENIZER), local_files_only=True)


def token_count(prompt: str) -> int:
    """Tokens the prompt takes in the shipped tokenizer, start and end tokens included."""
    return len(shipped_tokenizer()(prompt, truncation=False, verbose=False).input_ids)


def token_limit() -> int:
    """What CLIP's text encoder reads (77), start and end tokens included."""
    return int(shipped_tokenizer().model_max_length)
