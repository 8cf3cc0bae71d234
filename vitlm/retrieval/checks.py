"""Checks of retrieval settings and queries, standard library only: the `vitlm` command runs them before it
imports torch (it loads this module with the other light ones, see `_vitlm_cli.py`), so bad input is refused at
once; the Python API runs the same checks."""

import unicodedata

MAX_QUERY_LENGTH = 1000  # characters: the tokenizer keeps a few dozen tokens, and a huge string only stalls it
MAX_K = 10_000
ENGINES = ("local", "ray")


def positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_text(text, what: str = "the query text") -> str:
    """A text query (or label), stripped; refused with the reason when it is no usable text."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{what} is empty")
    if len(text) > MAX_QUERY_LENGTH:
        raise ValueError(f"{what} has {len(text):,} characters; the limit is {MAX_QUERY_LENGTH:,}")
    # NUL and other control characters, and lone surrogates (which no encoder can write)
    control = sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cs") and c not in "\t\n"})
    if control:
        raise ValueError(f"{what} holds control characters ({', '.join(control)})")
    return text.strip()


def check_k(k) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer from 1 to {MAX_K:,}, got {k!r}")
    return k


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    return engine
