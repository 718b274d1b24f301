"""The embedded GPT-2 tokenizer encodes and decodes exactly like tiktoken's GPT-2.

tiktoken is built here on the committed ranks file (tests/data/gpt2.tiktoken),
the same data scripts/make_tokenizer.py derives cmlp/data/tokenizer.json from,
so the comparison needs no network and checks the derivation end to end.
"""

from __future__ import annotations

import base64
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlp.errors import ModelError
from cmlp.tokenizer import DEFAULT_TOKENIZER_PATH, load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1].parent
RANKS_PATH = REPO_ROOT / "tests" / "data" / "gpt2.tiktoken"
SCRIPT_PATH = REPO_ROOT / "scripts" / "make_tokenizer.py"
COMMITTED_TOKENIZER = REPO_ROOT / "cmlp" / "data" / "tokenizer.json"

# GPT-2's pre-tokenization regex, as in OpenAI's original encoder.py.
GPT2_PAT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
EOT_ID = 50256

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference():
    """tiktoken's GPT-2 encoding, built on the committed ranks."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = {}
    for line in RANKS_PATH.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name="gpt2-committed-ranks", pat_str=GPT2_PAT, mergeable_ranks=ranks, special_tokens={EOT: EOT_ID}
    )


def assert_like_tiktoken(tok, reference, text: str) -> None:
    # Our encode always splits out <|endoftext|>, i.e. tiktoken's allowed_special="all".
    ids = tok.encode(text)
    assert ids == reference.encode(text, allowed_special="all"), repr(text)
    assert tok.decode(ids) == text, repr(text)


CORPUS = [
    # plain English, punctuation, casing
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "HELLO World hello WORLD",
    "Wait... what?! (Really?) [yes] {no} <maybe>",
    "a",
    " ",
    "",
    # contractions, including ones the regex does not special-case
    "it's don't they're we've I'm you'll he'd",
    "IT'S DON'T THEY'RE WE'VE I'M YOU'LL HE'D",
    "the dog's bone, 'quoted', ''double'', rock'n'roll",
    "it’s curly ’s apostrophes",
    # numbers
    "0 1 12 123 1234 12345 1234567890",
    "3.14159 -42 +7 1,000,000 1e-9 0x1F 2024-06-25 12:30:45",
    "٣٤٥ ৭৮৯ ௧௨ Ⅻ ½ ²³",
    # whitespace runs
    "two  spaces",
    "three   spaces",
    "trailing space ",
    "trailing spaces   ",
    "   leading spaces",
    "\ttab\tseparated\t",
    "\t\t\tindented",
    "line one\nline two\n",
    "\n\n\nblank lines\n\n",
    "crlf\r\nline\r\n",
    "mixed \t \n \r\n  whitespace",
    "     ",
    "\n",
    "\u00a0nbsp\u00a0 and\u3000ideographic\u2003em",
    "form\x0cfeed\x0bvtab\x85nel\u2028line\u2029para",
    # accents and other scripts, RTL included
    "café naïve résumé coöperate Ångström façade",
    "e\u0301 combining acute, a\u0308 combining diaeresis",
    "Ελληνικά, Русский текст, Українська",
    "中文分词测试，你好世界。",
    "日本語のテキスト、カタカナとひらがな。",
    "한국어 텍스트입니다",
    "العربية من اليمين إلى اليسار",
    "עברית מימין לשמאל",
    "हिन्दी देवनागरी ক্ষ ภาษาไทย",
    "mixed English العربية and עברית in one line",
    # emoji, ZWJ sequences, flags, skin tones, keycaps, variation selectors
    "😀 🎉 🚀 ❤️ ✨",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 technologist, 🏳️‍🌈 flag",
    "🇫🇷🇯🇵🇺🇸 flags, 👍🏻👍🏿 tones, 1️⃣ #️⃣ keycaps",
    "emoji😀glued😀to😀words",
    # code
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
    '<div class="x">&amp; &lt;tag&gt;</div>',
    "$ ls -la | grep '\\.py$' && echo \"done\" > /dev/null 2>&1",
    "SELECT * FROM t WHERE id IN (1,2,3) AND name LIKE '%x%';",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
    # odd characters
    "\x00\x01\x1f\x7f control bytes",
    "\ufeffBOM and \u200bzero\u200cwidth\u200djoiners",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙 and astral \U0010fffd",
    "ÃÂÃÂÃÂ mojibake Ã©",
    "----------------------------------------------------------------",
    "================ ................ ________________",
]


def test_default_path_is_the_packaged_file():
    assert DEFAULT_TOKENIZER_PATH.name == "tokenizer.json"
    assert DEFAULT_TOKENIZER_PATH.parent.parent == Path(sys.modules["cmlp"].__file__).resolve().parent
    assert DEFAULT_TOKENIZER_PATH.is_file()


def test_known_prompt(tok):
    assert tok.encode("The capital of France is") == [464, 3139, 286, 4881, 318]
    assert tok.decode([464, 3139, 286, 4881, 318]) == "The capital of France is"
    assert [tok.decode_one(i) for i in [464, 3139, 286, 4881, 318]] == [
        "The",
        " capital",
        " of",
        " France",
        " is",
    ]


def test_eos_and_vocab_size(tok):
    assert tok.eos_id == EOT_ID
    assert tok.vocab_size == 50257


@pytest.mark.parametrize("text", CORPUS)
def test_corpus_matches_tiktoken(tok, reference, text):
    assert_like_tiktoken(tok, reference, text)


def test_whole_corpus_as_one_text(tok, reference):
    assert_like_tiktoken(tok, reference, "\n".join(CORPUS))


def test_special_token(tok, reference):
    assert tok.encode(EOT) == [EOT_ID]
    assert tok.decode([EOT_ID]) == EOT
    assert tok.decode_one(EOT_ID) == EOT
    for text in [f"Hello{EOT}World", f"end. {EOT}\n\nstart", f"{EOT}{EOT}", f" {EOT} "]:
        assert_like_tiktoken(tok, reference, text)
    # A near-miss is ordinary text.
    assert EOT_ID not in tok.encode("<|endoftext|")


def test_every_token_decodes_like_tiktoken(tok, reference):
    # Covers the byte -> unicode spelling of all 50,257 vocabulary entries.
    for token_id in range(tok.vocab_size):
        assert tok.decode_one(token_id) == reference.decode([token_id]), token_id


def test_partial_utf8_token_decodes_to_replacement(tok):
    # "😀" is four bytes split over two tokens, neither of them valid UTF-8 alone.
    ids = tok.encode("😀")
    assert len(ids) == 2 and tok.decode(ids) == "😀"
    assert [tok.decode_one(i) for i in ids] == ["\ufffd", "\ufffd"]


@PROPERTY_SETTINGS
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_random_text_matches_tiktoken(tok, reference, text):
    assert_like_tiktoken(tok, reference, text)


@PROPERTY_SETTINGS
@given(st.binary(max_size=64))
def test_random_bytes_round_trip(tok, reference, data):
    # Every byte sequence that is text survives encode -> decode unchanged.
    assert_like_tiktoken(tok, reference, data.decode("utf-8", errors="replace"))
    assert_like_tiktoken(tok, reference, data.decode("latin-1"))


@PROPERTY_SETTINGS
@given(st.lists(st.integers(0, EOT_ID), max_size=16))
def test_random_ids_decode_like_tiktoken(tok, reference, ids):
    # Arbitrary id runs give arbitrary (often invalid) UTF-8; both replace it the same way.
    assert tok.decode(ids) == reference.decode(ids)


def _random_unicode(rng: random.Random) -> str:
    pools = [
        (0x20, 0x7E),
        (0xA0, 0xFF),
        (0x300, 0x36F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x590, 0x5FF),
        (0x600, 0x6FF),
        (0x900, 0x97F),
        (0xE00, 0xE7F),
        (0x3040, 0x30FF),
        (0x4E00, 0x9FFF),
        (0xAC00, 0xD7A3),
        (0x1F300, 0x1FAFF),
        (0x10000, 0x10FFFF),
    ]
    specials = [" ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u200d", "\ufe0f", "'s", "'ll", "0", "42"]
    parts = []
    for _ in range(rng.randrange(1, 40)):
        if rng.random() < 0.3:
            parts.append(rng.choice(specials))
        else:
            lo, hi = rng.choice(pools)
            parts.append(chr(rng.randint(lo, hi)))
    return "".join(parts)


def test_seeded_random_unicode_matches_tiktoken(tok, reference):
    rng = random.Random(20250625)
    for _ in range(2000):
        assert_like_tiktoken(tok, reference, _random_unicode(rng))


def test_generated_file_is_reproducible(tmp_path):
    out = tmp_path / "tokenizer.json"
    subprocess.run(
        [sys.executable, str(SCRIPT_PATH), "--ranks", str(RANKS_PATH), "--output", str(out)],
        check=True,
        capture_output=True,
    )
    generated = out.read_bytes()
    assert generated == COMMITTED_TOKENIZER.read_bytes()
    assert generated == DEFAULT_TOKENIZER_PATH.read_bytes()


def test_script_rejects_a_bad_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64! 1\n")
    result = subprocess.run(
        [sys.executable, str(SCRIPT_PATH), "--ranks", str(bad), "--output", str(tmp_path / "out.json")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "bad.tiktoken:2" in result.stderr
    assert not (tmp_path / "out.json").exists()


def _assert_one_line_model_error(path: Path, fragment: str) -> None:
    with pytest.raises(ModelError) as info:
        load_tokenizer(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and fragment in message


def test_missing_file_is_a_model_error(tmp_path):
    _assert_one_line_model_error(tmp_path / "absent.json", "not found")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json at all",
        b'{"version": "1.0"}',
        b"[1, 2, 3]",
        b"\xff\xfe\x00 not utf-8",
    ],
)
def test_corrupt_file_is_a_model_error(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        load_tokenizer(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_file_is_a_model_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(DEFAULT_TOKENIZER_PATH.read_bytes()[:100_000])
    _assert_one_line_model_error(path, "corrupt")


def test_tokenizer_without_endoftext_loads(tmp_path):
    """Issue 12: other vocabularies have other EOS tokens (load_model_tokenizer reads them)."""
    text = DEFAULT_TOKENIZER_PATH.read_text(encoding="utf-8")
    path = tmp_path / "tokenizer.json"
    path.write_text(text.replace(EOT, "<|other|>"), encoding="utf-8")
    tok = load_tokenizer(path)
    assert tok.eos_id is None and tok.eos_ids == () and tok.eos_token is None
    assert tok.encode("<|other|>") == [EOT_ID]


def test_directory_is_a_model_error(tmp_path):
    _assert_one_line_model_error(tmp_path, "cannot read")


def test_out_of_range_id_is_a_model_error(tok):
    for bad in ([50257], [0, -1], [2**40]):
        with pytest.raises(ModelError):
            tok.decode(bad)
    with pytest.raises(ModelError):
        tok.decode_one(tok.vocab_size)
