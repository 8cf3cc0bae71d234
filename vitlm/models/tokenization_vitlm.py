"""CLIP's BPE tokenizer with open_clip's text cleaning, so that token ids equal open_clip's.

transformers' `CLIPTokenizer` only NFC-normalizes, collapses whitespace and lower-cases, in Rust. open_clip first runs
`ftfy.fix_text` and `html.unescape` (twice), then lower-cases with Python's `str.lower`. The two disagree on curly
quotes, HTML entities, ligatures, fullwidth forms, control characters and the Greek final sigma, among others.
`VitlmCLIPTokenizer` runs open_clip's cleaning in Python before the Rust pipeline. This folder may not import ftfy, so
the ftfy steps are re-implemented with the standard library, all but one:

- Mojibake repair (`ftfy.fix_encoding`: text decoded with the wrong codec, e.g. "schÃ¶n" for "schön") is heuristic
  and table-driven; it is not reproduced, so such text is tokenized as written. Run `ftfy.fix_text` on it first to
  get open_clip's ids.

Remaining differences come from Unicode tables of different ages, or from an open_clip quirk:

- Code points unassigned in this Python's Unicode version (e.g. 3.11: Unicode 14) may be letters to open_clip's
  `regex` module or have a lower-case form in Rust's tables, and then split or lower-case differently. So does
  U+0345 (a combining mark that open_clip's case-insensitive pattern counts as a letter).
- open_clip turns the literal strings "<start_of_text>" / "<end_of_text>" inside a text into special tokens; here
  they are tokenized as written, and so are CLIP's own special strings "!", "<|startoftext|>" and "<|endoftext|>"
  (as open_clip does). Tokens added with `add_tokens` / `add_special_tokens` are found in text as by CLIPTokenizer.
"""

import html
import os
import re
import unicodedata
from html.entities import html5

from tokenizers import Regex, normalizers
from transformers import CLIPTokenizer
from transformers.tokenization_utils_tokenizers import TOKENIZER_FILE


def _ftfy_html_entities() -> dict[str, str]:
    # ftfy only decodes entities that end in ";", plus upper-cased names (P&EACUTE;REZ) that html.unescape ignores.
    entities = {}
    for name, char in html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            upper = "&" + name.upper()
            if name == name.lower() and html.unescape(upper) == upper:
                entities[upper] = char.upper()
    return entities


def _ftfy_char_map() -> dict[int, str]:
    # ftfy's fix_latin_ligatures, fix_character_width and uncurl_quotes: each replaces single characters.
    ligatures = "ĲĳŉǱǲǳǄǅǆǇǈǉǊǋǌﬀﬁﬂﬃﬄﬅﬆ"
    char_map = {ord(c): "".join(chr(int(h, 16)) for h in unicodedata.decomposition(c).split()[1:]) for c in ligatures}
    char_map[0x3000] = " "
    for i in range(0xFF01, 0xFFF0):
        if unicodedata.normalize("NFKC", chr(i)) != chr(i):
            char_map[i] = unicodedata.normalize("NFKC", chr(i))
    char_map.update({i: "'" for i in [0x02BC, *range(0x2018, 0x201C)]})
    char_map.update({i: '"' for i in range(0x201C, 0x2020)})
    return char_map


_HTML_ENTITIES = _ftfy_html_entities()
_HTML_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_C1_CONTROL_RE = re.compile(r"[\x80-\x9f]")
_CHAR_MAP = _ftfy_char_map()
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_TERMINAL_ESCAPE_RE = re.compile(r"\033\[((?:\d|;)*)([a-zA-Z])")
_CONTROL_CHARS = dict.fromkeys([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF])
_CONTROL_CHARS.update(dict.fromkeys(range(0xFFF9, 0xFFFD)))


def _unescape_entity(match: re.Match) -> str:
    entity = match.group(0)
    if entity in _HTML_ENTITIES:
        return _HTML_ENTITIES[entity]
    if entity.startswith("&#"):
        # a numeric reference counts only if html.unescape consumes it up to the ";"
        unescaped = html.unescape(entity)
        return entity if ";" in unescaped else unescaped
    return entity


def _decode_c1_control(match: re.Match) -> str:
    # ftfy reads C1 controls as "sloppy" windows-1252: the five bytes cp1252 leaves undefined stay as they are
    try:
        return match.group(0).encode("latin-1").decode("cp1252")
    except UnicodeDecodeError:
        return match.group(0)


def _join_surrogate_pair(match: re.Match) -> str:
    return match.group(0).encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def _ftfy_fix_segment(text: str, unescape_html: bool) -> str:
    # ftfy's fix_and_explain with its default config minus fix_encoding: the fixes in ftfy's order, to a fixed point
    while True:
        fixed = _HTML_ENTITY_RE.sub(_unescape_entity, text) if unescape_html else text
        fixed = _C1_CONTROL_RE.sub(_decode_c1_control, fixed).translate(_CHAR_MAP)
        fixed = fixed.replace("\r\n", "\n").replace("\r", "\n")
        fixed = fixed.replace("\u2028", "\n").replace("\u2029", "\n").replace("\u0085", "\n")
        if _SURROGATE_RE.search(fixed):
            fixed = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_join_surrogate_pair, fixed))
        fixed = _TERMINAL_ESCAPE_RE.sub("", fixed).translate(_CONTROL_CHARS)
        fixed = unicodedata.normalize("NFC", fixed)
        if fixed == text:
            return fixed
        text = fixed


def clean_text(text: str) -> str:
    """open_clip's default cleaning (`clean="lower"`) without ftfy's mojibake repair: ftfy.fix_text, html.unescape
    twice, whitespace collapsed, lower-cased."""
    segments = []
    unescape_html = True
    # ftfy fixes line by line and stops unescaping HTML from the first line that contains "<" (it may be markup)
    for segment in re.split(r"(?<=\n)", text):
        unescape_html = unescape_html and "<" not in segment
        segments.append(_ftfy_fix_segment(segment, unescape_html))
    text = html.unescape(html.unescape("".join(segments)))
    return " ".join(text.split()).lower()


# CLIP's own special strings, which a text never yields (as in open_clip): "!" is also the pad token, and "!!" one BPE
# token. Before the backend looks for added tokens in a text, their "!" and "|" become control characters that
# `clean_text` never leaves, and the normalizer turns them back first thing; tokens added by the user are not hidden.
CLIP_SPECIAL_STRINGS = ("!", "<|startoftext|>", "<|endoftext|>")
_HIDDEN = {"!": "\x00", "|": "\x01"}
_HIDE = str.maketrans(_HIDDEN)


class VitlmCLIPTokenizer(CLIPTokenizer):
    """`CLIPTokenizer` that cleans text the way open_clip does (see `clean_text`) and pads like open_clip.

    Text is cleaned (lower-cased, HTML unescaped, ...) before tokenization, except for the tokens added with
    `add_tokens` / `add_special_tokens`: those with `normalized=False` (special tokens by default) are found in the
    text as written, the others after lower-casing, as by `CLIPTokenizer`. CLIP's own special strings ("!",
    "<|startoftext|>", "<|endoftext|>") inside a text are text, as in open_clip.

    Deliberately stricter than `CLIPTokenizer`: there is no empty tokenizer. Building one without a vocabulary (e.g.
    `from_pretrained` on a folder without tokenizer files) raises a `ValueError` saying where to get CLIP's.

    Args:
        vocab (`dict[str, int]`), merges (`list[tuple[str, str]]`):
            CLIP's BPE vocabulary and merges (`vitlm.clip_bpe.clip_tokenizer` builds them from open_clip's file).
        pad_token (`str`, *optional*, defaults to `"!"`):
            open_clip pads with id 0, which is the token "!".
        split_special_tokens (`bool`, *optional*, defaults to `False`):
            Whether special tokens added by the user are tokenized as text too.
    """

    def __init__(self, vocab=None, merges=None, pad_token="!", split_special_tokens=False, **kwargs):
        if vocab is None and kwargs.get("tokenizer_object") is None and kwargs.get("tokenizer_file") is None:
            source = kwargs.get("name_or_path") or "the arguments"
            raise ValueError(
                f"VitlmCLIPTokenizer got no vocabulary: {source} holds no tokenizer files (tokenizer.json, or "
                "vocab.json and merges.txt). Load the tokenizer from a folder that has them (the clip-vit-* and "
                "shapes-clip-small presets, a converted or trained model), or build CLIP's with "
                "`vitlm.clip_bpe.clip_tokenizer(context_length=...)` (needs open_clip_torch)."
            )
        super().__init__(
            vocab=vocab, merges=merges, pad_token=pad_token, split_special_tokens=split_special_tokens, **kwargs
        )
        # CLIP's normalizer minus NFC: `clean_text` ran NFC where ftfy does, before HTML unescaping and lower-casing.
        # Composing again would change what open_clip leaves decomposed: "e&#769;", or "T\u0308" lower-cased.
        self.backend_tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Replace(hidden, char) for char, hidden in _HIDDEN.items()]
            + [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )

    def _clean(self, texts):
        """`clean_text` on the text between the added tokens the backend matches as written, which stay as they are."""
        if isinstance(texts, (list, tuple)):
            return [self._clean(text) for text in texts]
        if not isinstance(texts, str):
            return texts
        kept = sorted(
            {
                token.content
                for token in self.added_tokens_decoder.values()
                if not token.normalized
                and token.content not in CLIP_SPECIAL_STRINGS
                and not (token.special and self.split_special_tokens)
            },
            key=len,
            reverse=True,
        )
        pieces = re.split("(" + "|".join(map(re.escape, kept)) + ")", texts) if kept else [texts]
        # odd pieces are the added tokens themselves
        return "".join(piece if i % 2 else clean_text(piece).translate(_HIDE) for i, piece in enumerate(pieces))

    def _encode_plus(self, text, text_pair=None, *args, **kwargs):
        if isinstance(text, (list, tuple)) and not text:
            # transformers' fast tokenizers fail on an empty batch with an IndexError deep inside
            raise ValueError("got an empty list of texts: give at least one (a zero-shot model, at least one label)")
        return super()._encode_plus(self._clean(text), self._clean(text_pair), *args, **kwargs)

    def _save_pretrained(self, save_directory, file_names, legacy_format=None, filename_prefix=None):
        # tokenizer.json without indentation: CLIP's 49k merges indented take 3.6 MB, written compactly 1.7 MB (the
        # same JSON), in every repo a model is saved to
        name = f"{filename_prefix}-{TOKENIZER_FILE}" if filename_prefix else TOKENIZER_FILE
        tokenizer_file = os.path.join(str(save_directory), name)
        self.backend_tokenizer.save(tokenizer_file, pretty=False)
        return (*file_names, tokenizer_file)


__all__ = ["VitlmCLIPTokenizer", "clean_text"]
