"""Exception types. Every error says what was expected, what arrived and what to do."""

from __future__ import annotations


class MetisError(Exception):
    """Base class of all errors raised deliberately by metis-rt."""


class ConfigError(MetisError):
    """A configuration file or override is malformed or names an unknown key."""


class CheckpointError(MetisError):
    """A checkpoint file does not match the architecture it is loaded into."""


class MissingWeightsError(MetisError):
    """Model files are absent from a model directory."""

    def __init__(self, model_dir: str, missing: list[str], hint: str):
        self.model_dir = model_dir
        self.missing = list(missing)
        listing = "\n".join(f"  - {m}" for m in self.missing)
        if not self.missing:  # the hint says it all (e.g. the directory does not exist)
            super().__init__(hint)
            return
        super().__init__(f"model directory {model_dir!r} lacks {len(self.missing)} file(s):\n{listing}\n{hint}")


class AudioInputError(MetisError):
    """An audio input is unusable (format, length, silence, clipping, NaN...)."""


class ClippedInputError(AudioInputError):
    """Heavily clipped audio. The message speaks the Python API; a command line says its own flag
    (:meth:`with_hint`)."""

    def __init__(self, problem: str, hint: str = "pass allow_clipped=True to process it anyway"):
        self.problem = problem
        super().__init__(f"{problem}; {hint}")

    def with_hint(self, hint: str) -> ClippedInputError:
        return ClippedInputError(self.problem, hint)


class TextInputError(MetisError, ValueError):
    """A text input is unusable (empty, too long, unsupported language, nothing pronounceable...)."""


class TextFrontendError(MetisError, RuntimeError):
    """The text frontend cannot run here (espeak-ng or phonemizer missing, unknown espeak voice)."""
