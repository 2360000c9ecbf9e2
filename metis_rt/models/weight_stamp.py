"""Whether weights are still the ones something was derived from (the hop's caches, issue 20).

A stamp records, per tensor, the tensor itself (identity: a replaced parameter is another object), its storage
address (``.to()``/``.data =`` move it) and, optionally, its version counter (in-place updates: training,
``load_state_dict``). Inference tensors keep no version; they cannot be updated in place outside inference mode.

Checking a stamp means reading every watched parameter (tens of attribute lookups): tens of microseconds, paid per
transformer call. Inside :func:`steady` (an engine step: the engine thread owns the models, nothing updates them
while it runs) :func:`still_unchanged` checks each stamp once and remembers the answer until the block ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

# id(stamp) -> (stamp, verdict) for the innermost steady block; None outside one
_VERDICTS: contextvars.ContextVar[dict[int, tuple[tuple, bool]] | None] = contextvars.ContextVar(
    "weight_stamp_verdicts", default=None
)


def stamp(tensors: Iterable[torch.Tensor], *, versions: bool = True) -> tuple:
    return tuple((t, t.data_ptr(), _version(t) if versions else 0) for t in tensors)


def unchanged(before: tuple | None, tensors: Iterable[torch.Tensor], *, versions: bool = True) -> bool:
    """True when ``tensors`` are the same tensors, at the same address (and version) as in ``before``."""
    if before is None:
        return False
    now = stamp(tensors, versions=versions)
    return len(now) == len(before) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(now, before, strict=True))


@contextmanager
def steady() -> Iterator[None]:
    """A block in which no weight changes: :func:`still_unchanged` checks each stamp at most once inside it."""
    token = _VERDICTS.set({})
    try:
        yield
    finally:
        _VERDICTS.reset(token)


def still_unchanged(
    before: tuple | None, tensors: Callable[[], Iterable[torch.Tensor]], *, versions: bool = True
) -> bool:
    """:func:`unchanged` of ``before`` against ``tensors()``; inside :func:`steady`, once per stamp per block."""
    verdicts = _VERDICTS.get()
    if verdicts is None or before is None:
        return unchanged(before, tensors(), versions=versions)
    hit = verdicts.get(id(before))
    if hit is not None and hit[0] is before:  # the stamp itself is kept: its id cannot be reused meanwhile
        return hit[1]
    verdict = unchanged(before, tensors(), versions=versions)
    verdicts[id(before)] = (before, verdict)
    return verdict


def _version(t: torch.Tensor) -> int:
    return 0 if t.is_inference() else t._version
