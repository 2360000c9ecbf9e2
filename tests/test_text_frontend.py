"""TTS text frontend: reference vectors (g2p_en, tts_tokenizer), normalisation rules, errors."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metis_rt.errors import CheckpointError, TextFrontendError, TextInputError
from metis_rt.text import MAX_TEXT_CHARS, PhoneTokenizer, phonemize
from metis_rt.text import espeak as espeak_module
from metis_rt.text.espeak import espeak_available
from metis_rt.text.g2p import apply_special_merges, check_language, mark_punctuation
from metis_rt.text.normalize import clean_punctuation, expand_abbreviations, normalize_numbers
from metis_rt.text.normalize_fr_de import normalize_french, normalize_german
from metis_rt.text.tokenizer import packaged_vocab_path

from .conftest import PARITY_DIR

TTS_DIR = PARITY_DIR / "tts"
requires_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)"
)


def _checks() -> dict[str, dict]:
    manifest = json.loads((TTS_DIR / "cases" / "manifest.json").read_text(encoding="utf-8"))
    return {check["name"]: check for check in manifest["checks"]}


def _g2p_cases() -> list[dict]:
    return _checks()["g2p_en"]["cases"] if TTS_DIR.is_dir() else []


@pytest.fixture(scope="module")
def tokenizer() -> PhoneTokenizer:
    return PhoneTokenizer.load(None)


def _spaced(text: str) -> str:
    """Collapse the padding spaces the number rules insert."""
    return " ".join(text.split())


# ----------------------------------------------------------------------------- reference vectors
@requires_espeak
@pytest.mark.parametrize("case", _g2p_cases(), ids=lambda case: case["ids"]["tensor"])
def test_g2p_en_matches_reference(tokenizer: PhoneTokenizer, parity_dir: Path, case: dict):
    expected = load_file(str(parity_dir / "tts" / case["ids"]["file"]))[case["ids"]["tensor"]]
    phones, ids = tokenizer.g2p(case["text"], case["language"])
    assert phones == case["phones"]
    assert ids == expected[0].tolist()


def test_all_g2p_cases_are_collected(parity_dir: Path):
    assert len(_g2p_cases()) == 30


@requires_espeak
def test_tts_tokenizer_matches_reference(tokenizer: PhoneTokenizer, parity_dir: Path):
    check = _checks()["tts_tokenizer"]
    params = check["params"]
    result = tokenizer.phone_ids(
        params["text"],
        params["prompt_text"],
        language=params["target_language"],
        prompt_language=params["prompt_language"],
    )
    for name, ref in check["expected"].items():
        expected = load_file(str(parity_dir / "tts" / ref["file"]))[ref["tensor"]]
        got = getattr(result, name)
        assert got.dtype == torch.int64 and got.shape == expected.shape == tuple(ref["shape"])
        assert torch.equal(got, expected), name


def test_packaged_vocab_is_the_parity_vocab(parity_dir: Path):
    packaged = packaged_vocab_path()
    assert packaged.read_bytes() == (parity_dir / "tts" / "g2p" / "vocab.json").read_bytes()
    assert len(PhoneTokenizer.load(None).vocab) == 363


# ----------------------------------------------------------------------------- English normalisation (pure)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith met Mrs. Jones", "doctor. Smith met misess. Jones"),
        ("ST. LOUIS, Mr Brown", "saint. LOUIS, mister Brown"),
        ("Drs. Who and Capt. Hook", "doctors. Who and captain. Hook"),
        ("btw, pens etc.", "by the way, pens et cetera."),
        ("Street cost Stop", "Street cost Stop"),  # whole words only
    ],
)
def test_expand_abbreviations(text: str, expected: str):
    assert expand_abbreviations(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1999", "nineteen ninety-nine"),
        ("1066", "ten sixty-six"),
        ("1905", "nineteen oh five"),
        ("1900", "nineteen hundred"),
        ("1,234", "twelve thirty-four"),
        ("2000", "two thousand"),
        ("2005", "two thousand five"),
        ("2010", "twenty ten"),
        ("1000", "one thousand"),
        ("3000", "three thousand"),
        ("215", "two hundred fifteen"),
        ("3456", "three thousand, four hundred fifty-six"),
        ("$12.50", "twelve dollars, fifty cents"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("$0", "zero dollars"),
        ("£30", "thirty pounds"),
        ("45%", "forty-five percent"),
        ("2.5%", "two point five percent"),
        ("3.5", "three point five"),
        ("3rd", "third"),
        ("21st", "twenty-first"),
        ("100th", "one hundredth"),
        ("1/2", "one half"),
        ("1/4", "one quarter"),
        ("3/4", "three quarters"),
        ("5/2", "five halves"),
        ("2/3", "two third"),
        ("0", "zero"),
    ],
)
def test_normalize_numbers(text: str, expected: str):
    assert _spaced(normalize_numbers(text)) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('She said: "Never again!" and left.', "She said:Never again!and left."),
        ("Wait... what?", "Wait…what?"),
        ("That’s true", "That's true"),
        ("now - the   end", "now the end"),
        ("你好，世界。", "你好,世界."),
    ],
)
def test_clean_punctuation(line: str, expected: str):
    assert clean_punctuation(line) == expected


# ----------------------------------------------------------------------------- phone post-processing (pure)
def test_mark_punctuation():
    assert mark_punctuation("h|ə|l|oʊ,|_|w|ɜː|l|d!") == "h|ə|l|oʊ|,|_|w|ɜː|l|d|!"
    assert mark_punctuation("'t|ɪ|z") == "|'|t|ɪ|z"


def test_special_merges_apply_in_order_to_whole_symbols():
    # ᵻ -> ɪ comes after the ɪ|ɹ rule, so the new ɪ is not merged; ɐɐ is a symbol of its own.
    assert apply_special_merges("t|ɹ|uː|_|ɐ|_|ᵻ|ɹ|_|ɐɐ|oː|ɹ") == "tɹ|uː|_|ɚ|_|ɪ|ɹ|_|ɐɐ|oːɹ"
    assert apply_special_merges("t|s|s|d|z|əl|n̩") == "ts|s|dz|l|n"


@requires_espeak
def test_final_word_boundary_is_dropped(tokenizer: PhoneTokenizer):
    phones, ids = tokenizer.g2p("Hello", "en")  # ends in a sound: "|_" appended, then removed with the final "_"
    assert phones == "h|ə|l|oʊ|"
    assert ids == [tokenizer.vocab[s] for s in ("h", "ə", "l", "oʊ")]
    phones, _ = tokenizer.g2p("Hello world", "en")  # ends in "d": no boundary
    assert phones == "h|ə|l|oʊ|_|w|ɜː|l|d|"


@requires_espeak
def test_line_breaks_read_as_spaces(tokenizer: PhoneTokenizer):
    assert tokenizer.g2p("Hello.\nGood night", "en") == tokenizer.g2p("Hello. Good night", "en")


@requires_espeak
def test_concurrent_calls_agree(tokenizer: PhoneTokenizer):
    texts = [case["text"] for case in _g2p_cases()[:8]] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda text: tokenizer.g2p(text, "en"), texts))
    assert parallel == [tokenizer.g2p(text, "en") for text in texts]


# ----------------------------------------------------------------------------- French / German (unverified)
def test_normalize_french():
    assert normalize_french("M. Dupont & Mme Durand...") == "monsieur Dupont et Madame Durand."


def test_normalize_german():
    assert normalize_german("Hallo (leise) — wie geht's?\nGut...") == "Hallo leise wie geht's?.Gut."


@requires_espeak
@pytest.mark.parametrize(("text", "language"), [("Bonjour tout le monde.", "fr"), ("Guten Morgen, Welt!", "de")])
def test_fr_de_produce_ids(tokenizer: PhoneTokenizer, text: str, language: str):
    phones, ids = tokenizer.g2p(text, language)
    assert phones.endswith(("|.", "|!")) and len(ids) > 5


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_rejected(text: str):
    with pytest.raises(TextInputError, match="nothing to say"):
        phonemize(text, "en")


@pytest.mark.parametrize(
    ("language", "message"),
    [
        (None, "pass the language explicitly"),
        ("auto", "pass the language explicitly"),
        ("zh", "not available offline"),
        ("ja", "not supported"),
        ("ko", "not supported"),
        ("es", "supported languages: 'en', 'fr', 'de'"),
    ],
)
def test_unsupported_language_is_rejected(language: str | None, message: str):
    with pytest.raises(TextInputError, match=message):
        check_language(language)
    with pytest.raises(TextInputError):
        PhoneTokenizer.load(None).g2p("hello", language)


@requires_espeak
@pytest.mark.parametrize("text", ["!!!", "—", '""', "..."])
def test_text_without_phones_is_rejected(text: str):
    with pytest.raises(TextInputError, match="no phones"):
        phonemize(text, "en")


def test_chinese_characters_in_english_are_rejected():
    with pytest.raises(TextInputError, match="Chinese characters"):
        phonemize("Hi 你好", "en")


def test_unreadable_number_is_rejected():
    with pytest.raises(TextInputError, match="cannot read out the number"):
        normalize_numbers("9" * 60)


def test_missing_espeak_is_reported(monkeypatch: pytest.MonkeyPatch):
    class NoEspeak:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("espeak not installed on your system")

    monkeypatch.setattr(espeak_module, "_BACKENDS", {})
    monkeypatch.setattr("phonemizer.backend.EspeakBackend", NoEspeak)
    with pytest.raises(TextFrontendError, match="apt-get install espeak-ng"):
        phonemize("hello", "en")


def test_missing_phonemizer_is_reported(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(espeak_module, "_BACKENDS", {})
    monkeypatch.setitem(sys.modules, "phonemizer.backend", None)
    with pytest.raises(TextFrontendError, match="phonemizer"):
        phonemize("hello", "en")


# ----------------------------------------------------------------------------- vocabulary loading
def test_model_dir_vocab_is_preferred(tmp_path: Path):
    (tmp_path / "g2p").mkdir()
    (tmp_path / "g2p" / "vocab.json").write_text(json.dumps({"vocab": {"h": 7, "aɪ": 9}}), encoding="utf-8")
    assert PhoneTokenizer.load(tmp_path).vocab == {"h": 7, "aɪ": 9}
    assert PhoneTokenizer.load(tmp_path / "missing").vocab == PhoneTokenizer.load(None).vocab
    assert PhoneTokenizer.load(tmp_path).ids("h|aɪ||.|x") == [7, 9]


@pytest.mark.parametrize("content", ["not json", json.dumps({"symbols": {}}), json.dumps({"vocab": {"a": "1"}})])
def test_malformed_vocab_is_rejected(tmp_path: Path, content: str):
    (tmp_path / "g2p").mkdir()
    (tmp_path / "g2p" / "vocab.json").write_text(content, encoding="utf-8")
    with pytest.raises(CheckpointError, match="vocab"):
        PhoneTokenizer.load(tmp_path)


def test_max_text_chars_is_exposed():
    assert MAX_TEXT_CHARS == 1000
