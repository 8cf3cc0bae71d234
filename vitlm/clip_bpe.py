"""CLIP's BPE tokenizer, built from the vocabulary file that open_clip ships, with token ids equal to open_clip's."""

import gzip
import importlib.util
import os
from pathlib import Path

from .models.tokenization_vitlm import VitlmCLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# open_clip's SimpleTokenizer reads lines 1..48894 of the file as merges (line 0 is a version header)
NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's (and GPT-2's) byte -> printable character table; its order fixes the ids of the first 512 tokens
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def default_bpe_path() -> Path:
    """Where the installed open_clip keeps CLIP's BPE vocabulary, found without importing open_clip (slow)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary ({BPE_FILENAME}) ships with open_clip, which is not installed: "
            "`pip install open_clip_torch`, or pass `bpe_path`."
        )
    return Path(spec.submodule_search_locations[0]) / BPE_FILENAME


def clip_tokenizer(bpe_path: str | os.PathLike | None = None, context_length: int = 77) -> VitlmCLIPTokenizer:
    """CLIP's BPE tokenizer; `tok(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]`
    equals `open_clip.get_tokenizer("ViT-B-32")(texts)` (see `VitlmCLIPTokenizer` for the exceptions).

    Args:
        bpe_path: CLIP's gzipped merges file; defaults to the one inside the installed open_clip package.
        context_length: the tokenizer's `model_max_length`, i.e. the length texts are padded / truncated to.
    """
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP's BPE vocabulary not found at {path}: `pip install open_clip_torch`, or pass `bpe_path`."
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    chars = list(_bytes_to_unicode().values())
    # ids: single bytes, the same as word endings, one token per merge, then the two special tokens (49406, 49407)
    tokens = chars + [c + "</w>" for c in chars] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return VitlmCLIPTokenizer(
        vocab={token: i for i, token in enumerate(tokens)}, merges=merges, model_max_length=context_length
    )


__all__ = ["clip_tokenizer", "default_bpe_path"]
