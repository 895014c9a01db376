"""Small CLIP-format BPE tokenizers, built from a text corpus.

Real SD 1.x models ship CLIP's 49408-token vocabulary. Tiny test models and the
demo model need a tokenizer too, but no hub is reachable, so the project builds its
own in CLIP's exact file format (byte-level alphabet, ``</w>`` word ends, the two
CLIP special tokens, 77-token context); ``transformers.CLIPTokenizer`` loads it
unchanged, which keeps the tokenizer path identical for tiny and real models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from tokenizers.pre_tokenizers import ByteLevel

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's own pre-tokenisation pattern: words, single digits, runs of punctuation.
_CLIP_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _learn_merges(corpus: Iterable[str], num_merges: int) -> list[tuple[str, str]]:
    """BPE merges over CLIP's byte alphabet with ``</w>`` word ends."""
    alphabet = ByteLevel.alphabet()
    learner = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    learner.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    learner.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_WORDS), behavior="removed", invert=True),
            ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + num_merges,
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    learner.train_from_iterator(list(corpus), trainer)
    merges = json.loads(learner.to_str())["model"]["merges"]
    # tokenizers writes a merge as ["a", "b"] (>=0.20) or "a b" (older).
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]


def _byte_symbols() -> list[str]:
    """CLIP's 256 byte symbols, in CLIP's order (printable bytes first)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols = [chr(b) for b in printable]
    shift = 0
    for b in range(256):
        if b not in printable:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def write_clip_tokenizer(corpus: Iterable[str], out_dir: str | Path, num_merges: int = 400) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs CLIPTokenizer reads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = _learn_merges(corpus, num_merges)
    base = _byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "do_lower_case": True,
        "errors": "replace",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return out
