"""Phone ids for the TTS models: :class:`PhoneTokenizer` maps text to the ids of the MaskGCT phone vocabulary.

``ids = [vocab[s] for s in phones.split("|") if s in vocab]``: symbols absent from the vocabulary (the empty string
between separators, rare espeak phones) are dropped silently, as in the reference. The vocabulary is
``<model_dir>/g2p/vocab.json`` when a model directory provides one, else the copy packaged with metis-rt
(``{"vocab": {symbol: id}}``, 363 symbols, from Amphion's MaskGCT, MIT licence).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from metis_rt.errors import CheckpointError, TextInputError
from metis_rt.text.espeak import PHONE_SEPARATOR, PUNCTUATION_MARKS
from metis_rt.text.g2p import WORD_BOUNDARY, phonemize

MAX_TEXT_CHARS = 1000  # longest text a caller should accept (enforced by the callers, not here)
VOCAB_RELATIVE_PATH = Path("g2p") / "vocab.json"


@dataclass(frozen=True)
class TokenizedText:
    """Phone ids of a TTS request, each int64 ``[1, n]``; ``phone_ids`` = prompt ids then target ids."""

    phone_ids: torch.Tensor
    prompt_phone_ids: torch.Tensor
    target_phone_ids: torch.Tensor


def packaged_vocab_path() -> Path:
    """The phone vocabulary shipped with metis-rt (``metis_rt/text/data/vocab.json``)."""
    return Path(str(resources.files("metis_rt.text") / "data" / "vocab.json"))


def read_vocab(path: Path) -> dict[str, int]:
    """Read a ``{"vocab": {symbol: id}}`` file; raise :class:`CheckpointError` naming the problem."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the phone vocabulary {path}: {exc}") from exc
    vocab = data.get("vocab") if isinstance(data, dict) else None
    if not isinstance(vocab, dict) or not vocab:
        raise CheckpointError(f"phone vocabulary {path} is malformed: expected {{'vocab': {{symbol: id}}}}")
    bad = [symbol for symbol, index in vocab.items() if not isinstance(index, int) or isinstance(index, bool)]
    if bad:
        raise CheckpointError(f"phone vocabulary {path}: non-integer ids for symbols {bad[:5]}")
    return dict(vocab)


class PhoneTokenizer:
    """Text -> (phone string, phone ids) with a fixed vocabulary. Thread-safe (espeak calls are serialised)."""

    def __init__(self, vocab: Mapping[str, int]):
        if not vocab:
            raise CheckpointError("the phone vocabulary is empty")
        self.vocab: dict[str, int] = dict(vocab)
        self._silent_ids = frozenset(self.vocab[s] for s in (*PUNCTUATION_MARKS, WORD_BOUNDARY) if s in self.vocab)

    @classmethod
    def load(cls, model_dir: Path | None = None) -> PhoneTokenizer:
        """Use ``model_dir/g2p/vocab.json`` when present, else the packaged vocabulary."""
        if model_dir is not None and (Path(model_dir) / VOCAB_RELATIVE_PATH).is_file():
            return cls(read_vocab(Path(model_dir) / VOCAB_RELATIVE_PATH))
        return cls(read_vocab(packaged_vocab_path()))

    def ids(self, phones: str) -> list[int]:
        """Ids of the ``|``-separated symbols of ``phones`` found in the vocabulary."""
        return [self.vocab[symbol] for symbol in phones.split(PHONE_SEPARATOR) if symbol in self.vocab]

    def g2p(self, text: str, language: str) -> tuple[str, list[int]]:
        """The reference's ``g2p_(text, language)``: phone string and ids, e.g. ``("h|aɪ|.|", [41, 20, 1])``.

        Raises :class:`TextInputError` (empty text, unsupported language, nothing pronounceable) and
        :class:`~metis_rt.errors.TextFrontendError` (espeak-ng missing).
        """
        phones = phonemize(text, language)
        ids = self.ids(phones)
        if all(index in self._silent_ids for index in ids):
            raise TextInputError(
                f"the text {text[:80]!r} gives no phone of the vocabulary (espeak-ng phones: {phones[:80]!r})"
            )
        return phones, ids

    def phone_ids(
        self, text: str, prompt_text: str, language: str = "en", prompt_language: str = "en"
    ) -> TokenizedText:
        """Ids of ``prompt_text`` then ``text`` (no separator between them), as ``Metis.tokenizer`` builds them."""
        prompt_ids = torch.tensor([self.g2p(prompt_text, prompt_language)[1]], dtype=torch.int64)
        return self.phone_ids_after(prompt_ids, text, language)

    def phone_ids_after(self, prompt_ids: torch.Tensor, text: str, language: str = "en") -> TokenizedText:
        """:meth:`phone_ids` with the prompt already phonemised (``prompt_ids`` [1, P], e.g. a voice's, kept)."""
        target_ids = torch.tensor([self.g2p(text, language)[1]], dtype=torch.int64)
        return TokenizedText(
            phone_ids=torch.cat([prompt_ids, target_ids], dim=1),
            prompt_phone_ids=prompt_ids,
            target_phone_ids=target_ids,
        )
