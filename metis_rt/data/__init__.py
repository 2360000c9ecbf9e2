"""Evaluation data built from speech and noise recordings in Debian packages (see docs/evaluation.md).

`build_eval_set` is the entry point (``metis-rt data build-eval`` calls it); `SourceError` says which Debian
packages to install when a source is missing.
"""

from metis_rt.data.evalset import EvalSetError, build_eval_set
from metis_rt.data.sources import SourceError

__all__ = ["EvalSetError", "SourceError", "build_eval_set"]
