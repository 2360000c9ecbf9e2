"""Whether weights are still the ones something was derived from (the hop's caches, issue 20).

A stamp records, per tensor, the tensor itself (identity: a replaced parameter is another object), its storage
address (``.to()``/``.data =`` move it) and, optionally, its version counter (in-place updates: training,
``load_state_dict``). Inference tensors keep no version; they cannot be updated in place outside inference mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def stamp(tensors: Iterable[torch.Tensor], *, versions: bool = True) -> tuple:
    return tuple((t, t.data_ptr(), _version(t) if versions else 0) for t in tensors)


def unchanged(before: tuple | None, tensors: Iterable[torch.Tensor], *, versions: bool = True) -> bool:
    """True when ``tensors`` are the same tensors, at the same address (and version) as in ``before``."""
    if before is None:
        return False
    now = stamp(tensors, versions=versions)
    return len(now) == len(before) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(now, before, strict=True))


def _version(t: torch.Tensor) -> int:
    return 0 if t.is_inference() else t._version
