import json
import os
import subprocess
import sys

import ftfy
import open_clip
import pytest
import torch
from transformers import AutoTokenizer, CLIPTokenizer

from vitlm.clip_bpe import clip_tokenizer, default_bpe_path

# Each line exercises one way open_clip's cleaning (ftfy.fix_text, html.unescape twice, whitespace, str.lower) or
# CLIP's pre-tokenizer regex could diverge from transformers' CLIPTokenizer.
CORPUS = [
    "a photo of a cat",
    "Hello, World!!",
    "wait... what?! (really) [yes] {no} e-mail: foo@bar.com #tag $5 50% a/b",
    "A PHOTO of a CaT, McDonald's, I'M HERE, it'S, we'LL, they'RE, you'VE, he'D",
    "1234567890 3.14159 2,000,000 4k 1080p",
    "café naïve résumé Straße İstanbul",
    "東京タワーの写真 한국어 텍스트",
    "Привет, мир",
    "مرحبا بالعالم",
    "Ελληνικά ΟΔΟΣ",  # Python lower-cases the final sigma to ς, Rust's Lowercase to σ
    "😀👍🏽 family 👨‍👩‍👧‍👦 flag 🇫🇷",
    "  leading and trailing  ",
    "tabs\tand\nnewlines\r\nand\rreturns\u2028separators",
    "\u3000ideographic space\u00a0no-break space",
    "AT&amp;T &lt;b&gt;bold&lt;/b&gt;",
    "&amp;amp;lt;nested&amp;amp;gt;",
    "it&#39;s &#x2019;quoted&#8217; caf&eacute; P&EACUTE;REZ &copy; 2024&nbsp;ok",
    "&ampx no semicolon, x &lt y",
    "<b>markup</b> keeps &rsquo; curly",  # ftfy does not unescape lines containing "<"; html.unescape still does
    "line one <\n&rsquo; two",
    "don’t “quote” ‘me’",
    "ﬁne ﬂour ĳssel",
    "ＬＯＵＤ　ＮＯＩＳＥＳ ｶﾀｶﾅ",
    "\x1b[31mred\x1b[0m a\x00b\x7fc bom\ufeff",
    "\x93C1 quotes\x94 and\x85ellipsis",
    "e\u0301 and T\u0308 and e&#769;",  # decomposed: open_clip does not compose them again
    "<|endoftext|> and <|startoftext|> are text",
    "",
    "   ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def encode(tokenizer, texts, context_length=77):
    return tokenizer(texts, padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")[
        "input_ids"
    ]


def test_vocab_matches_open_clip(tokenizer):
    # open_clip names the special tokens differently; their ids (49406, 49407) are what matters
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    expected = {names.get(token, token): i for token, i in open_clip.tokenizer.SimpleTokenizer().encoder.items()}
    assert tokenizer.get_vocab() == expected
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (49406, 49407, 0)


def test_corpus_ids_match_open_clip(tokenizer, reference):
    ids = encode(tokenizer, CORPUS)
    expected = reference(CORPUS)
    mismatches = [text for text, a, b in zip(CORPUS, ids, expected, strict=True) if not torch.equal(a, b)]
    assert not mismatches
    assert ids.shape == (len(CORPUS), 77)


@pytest.mark.parametrize("context_length", [16, 32])
def test_other_context_lengths(reference, context_length):
    tokenizer = clip_tokenizer(context_length=context_length)
    assert tokenizer.model_max_length == context_length
    ids = tokenizer(CORPUS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, reference(CORPUS, context_length=context_length))


def test_truncation_keeps_end_of_text(tokenizer, reference):
    text = " ".join(f"word{i}" for i in range(200))
    ids = encode(tokenizer, [text])
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == 49406 and ids[0, -1].item() == 49407
    assert torch.equal(ids, reference([text]))


def test_mojibake_needs_ftfy_first(tokenizer, reference):
    # ftfy's mojibake repair is not reproduced (see VitlmCLIPTokenizer); running ftfy first restores parity
    texts = ["schÃ¶n", "âœ” No problems"]
    assert not torch.equal(encode(tokenizer, texts), reference(texts))
    assert torch.equal(encode(tokenizer, [ftfy.fix_text(text) for text in texts]), reference(texts))


def test_save_and_reload_without_vitlm(tokenizer, tmp_path):
    folder = tmp_path / "tokenizer"
    tokenizer.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["tokenization_vitlm.py", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "VitlmCLIPTokenizer"
    assert config["auto_map"]["AutoTokenizer"][0] == "tokenization_vitlm.VitlmCLIPTokenizer"
    # written without indentation (1.7 MB, not 3.6): the same JSON as the backend's pretty form
    written = (folder / "tokenizer.json").read_text()
    assert "\n" not in written and len(written) < 2_000_000
    assert json.loads(written) == json.loads(tokenizer.backend_tokenizer.to_str(pretty=True))

    expected = encode(tokenizer, CORPUS).tolist()
    assert encode(AutoTokenizer.from_pretrained(folder, trust_remote_code=True), CORPUS).tolist() == expected

    # A fresh process that never imports vitlm: the saved folder alone must reproduce the ids.
    script = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "ids = tok(json.loads(sys.argv[2]), padding='max_length', truncation=True)['input_ids']\n"
        "print(json.dumps({'ids': ids, 'vitlm_imported': 'vitlm' in sys.modules}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), json.dumps(CORPUS)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert not output["vitlm_imported"]
    assert output["ids"] == expected


def test_default_path_found_without_importing_open_clip(monkeypatch):
    monkeypatch.delitem(sys.modules, "open_clip")
    path = default_bpe_path()
    assert "open_clip" not in sys.modules
    assert path.is_file() and path.name == "bpe_simple_vocab_16e6.txt.gz"


def test_missing_bpe_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "bpe.txt.gz"
    with pytest.raises(FileNotFoundError, match="open_clip_torch") as error:
        clip_tokenizer(bpe_path=missing)
    assert str(missing) in str(error.value)


def clip_reference_tokenizer(tokenizer):
    """transformers' own CLIPTokenizer on the same vocabulary and merges (its pad token is "<|endoftext|>")."""
    merges = [tuple(merge) for merge in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]]
    return CLIPTokenizer(vocab=tokenizer.get_vocab(), merges=merges)


ADDED_TOKEN_TEXTS = [
    "a photo of <OBJ> on a table",
    "two<OBJ><OBJ>cats and <|region|>",
    "Lower-cased: <obj> is text, NEWword and newword are the added token",
    "wow! <OBJ>!! the end",
]


def test_added_tokens_are_found_as_by_clip_tokenizer():
    """Added special tokens were never found in text: the text was lower-cased before the backend looked for them."""
    tokenizer = clip_tokenizer()
    reference = clip_reference_tokenizer(tokenizer)
    for tok in (tokenizer, reference):
        assert tok.add_special_tokens({"additional_special_tokens": ["<OBJ>", "<|region|>"]}) == 2
        assert tok.add_tokens(["NEWword"]) == 1
    expected = reference(ADDED_TOKEN_TEXTS)["input_ids"]
    assert tokenizer(ADDED_TOKEN_TEXTS)["input_ids"] == expected
    obj, region, word = tokenizer.convert_tokens_to_ids(["<OBJ>", "<|region|>", "NEWword"])
    assert expected[1].count(obj) == 2 and region in expected[1] and expected[2].count(word) == 2
    assert tokenizer.decode(tokenizer("a <OBJ> b")["input_ids"], skip_special_tokens=True) == "a b"


def test_added_tokens_survive_save_and_reload(tmp_path):
    tokenizer = clip_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<OBJ>"]})
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(ADDED_TOKEN_TEXTS)["input_ids"] == tokenizer(ADDED_TOKEN_TEXTS)["input_ids"]
    assert reloaded.convert_tokens_to_ids("<OBJ>") in reloaded("a <OBJ>")["input_ids"]


def test_clip_special_strings_stay_text_and_split_special_tokens_is_honoured(tokenizer, reference):
    # "!" (the pad token) and CLIP's own start / end strings are text inside a text, as open_clip has them
    texts = ["wow!! <|endoftext|> and <|startoftext|> !"]
    assert torch.equal(encode(tokenizer, texts), reference(texts))
    splitting = clip_tokenizer()
    splitting.add_special_tokens({"additional_special_tokens": ["<OBJ>"]})
    splitting.split_special_tokens = True
    assert splitting.convert_tokens_to_ids("<OBJ>") not in splitting("a <OBJ>")["input_ids"]
    assert splitting("a <OBJ>")["input_ids"] == splitting("a <obj>")["input_ids"]
