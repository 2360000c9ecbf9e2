"""TTS text frontend: normalisation, grapheme-to-phoneme (espeak-ng), phone ids of the MaskGCT vocabulary.

English matches the reference vectors exactly (espeak-ng 1.51); French and German follow the reference's rules
but are not verified against reference vectors. See ``docs/text-frontend.md``.
"""

from metis_rt.text.g2p import SUPPORTED_LANGUAGES, VERIFIED_LANGUAGES, phonemize
from metis_rt.text.tokenizer import MAX_TEXT_CHARS, PhoneTokenizer, TokenizedText

__all__ = [
    "MAX_TEXT_CHARS",
    "SUPPORTED_LANGUAGES",
    "VERIFIED_LANGUAGES",
    "PhoneTokenizer",
    "TokenizedText",
    "phonemize",
]
