"""Strict, explicit loading of official checkpoint files into our modules.

Rules (see STYLE.md habit 10):
* models are built on the ``meta`` device and materialised tensor by tensor from the file (no 2x memory peak);
* every tensor in the file is consumed, every parameter/buffer of the target is filled, shapes are checked;
  the only tolerated extra tensors are named explicitly by the caller (``ignore``);
* a mismatch raises :class:`CheckpointError` naming the file and the keys (missing, unexpected, mis-shaped);
* official weight-norm factors (``weight_g`` / ``weight_v`` of old ``torch.nn.utils.weight_norm``) are folded
  into a plain ``weight`` at load time for every module of type :class:`WNConv1d`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from metis_rt.errors import CheckpointError

MAX_LISTED_KEYS = 12


class WNConv1d(nn.Conv1d):
    """A Conv1d whose official checkpoint stores weight-norm factors; plain convolution at inference."""


def weight_norm_modules(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, sub in module.named_modules():
        if isinstance(sub, WNConv1d):
            yield name, sub


def file_layout(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes an official file holds for ``module`` (module-relative names).

    Works on ``meta`` modules. Weight-normed convolutions appear as ``weight_g`` [out, 1, 1] and ``weight_v``.
    """
    layout = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    for name, _ in weight_norm_modules(module):
        key = f"{name}.weight" if name else "weight"
        shape = layout.pop(key)
        stem = key[: -len("weight")]
        layout[stem + "weight_g"] = (shape[0],) + (1,) * (len(shape) - 1)
        layout[stem + "weight_v"] = shape
    return layout


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision for numerically delicate steps: float64 stays float64, anything narrower goes to float32."""
    return torch.promote_types(dtype, torch.float32)


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w = g * v / ||v||, norm over all dimensions except 0, evaluated in at least float32."""
    work = compute_dtype(dtype)
    v = v.to(work)
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return (g.to(work) * v / norm).to(dtype)


@dataclass(frozen=True)
class FileHeader:
    path: Path
    shapes: dict[str, tuple[int, ...]]


def read_header(path: str | Path) -> FileHeader:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    return FileHeader(path, shapes)


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    more = f" ... (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return shown + more


def check_layout(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    path: Path,
    ignore: Callable[[str], bool] = lambda k: False,
) -> None:
    """Raise CheckpointError unless ``found`` (file) has exactly ``expected`` (+ explicitly ignored keys)."""
    missing = set(expected) - set(found)
    unexpected = {k for k in set(found) - set(expected) if not ignore(k)}
    bad_shape = {
        k: (found[k], expected[k]) for k in set(expected) & set(found) if tuple(found[k]) != tuple(expected[k])
    }
    if not (missing or unexpected or bad_shape):
        return
    lines = [f"checkpoint {path} does not match the model it is loaded into:"]
    if missing:
        lines.append(f"  missing {len(missing)} tensor(s): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected {len(unexpected)} tensor(s): {_listing(unexpected)}")
    for k, (got, want) in sorted(bad_shape.items())[:MAX_LISTED_KEYS]:
        lines.append(f"  shape of {k}: file has {list(got)}, model expects {list(want)}")
    if len(bad_shape) > MAX_LISTED_KEYS:
        lines.append(f"  ... and {len(bad_shape) - MAX_LISTED_KEYS} more shape mismatches")
    lines.append("  Is the file from the right repository and revision, and does config.json match it?")
    raise CheckpointError("\n".join(lines))


def load_checkpoint(
    module: nn.Module,
    path: str | Path,
    *,
    prefix: str = "",
    only: Callable[[str], bool] | None = None,
    ignore: Callable[[str], bool] = lambda k: False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    high_precision: Callable[[str], bool] = lambda k: False,
) -> None:
    """Fill ``module`` (typically on ``meta``) from the safetensors file ``path``, strictly.

    ``prefix`` is prepended to module-relative names to form file names. ``only`` restricts the module
    tensors this file must provide (the others are left untouched, e.g. an adapter loaded from another file);
    ``ignore`` names file tensors that are known to be unused. Floating tensors are cast to ``dtype``, those
    named by ``high_precision`` to ``compute_dtype(dtype)`` (e.g. an iSTFT window of a bf16 model).
    """
    header = read_header(path)
    layout = file_layout(module)
    if only is not None:
        layout = {k: s for k, s in layout.items() if only(k)}
    expected = {prefix + k: s for k, s in layout.items()}
    check_layout(expected, header.shapes, header.path, ignore)

    wn_keys = {(f"{n}.weight" if n else "weight") for n, _ in weight_norm_modules(module)}
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(header.path), framework="pt", device="cpu") as f:
        for key in layout:
            if key.endswith(("weight_g", "weight_v")) and key[:-2] in wn_keys:
                continue
            state[key] = _cast(f.get_tensor(prefix + key), compute_dtype(dtype) if high_precision(key) else dtype)
        for wkey in wn_keys:
            stem = wkey[: -len("weight")]
            if stem + "weight_v" not in layout:
                continue
            g = f.get_tensor(prefix + stem + "weight_g")
            v = f.get_tensor(prefix + stem + "weight_v")
            state[wkey] = fold_weight_norm(g, v, dtype)
    state = {k: v.to(device) for k, v in state.items()}
    assign_state(module, state, header.path)


def load_module(build: Callable[[], nn.Module], path: str | Path, what: str, **options) -> nn.Module:
    """Build a module on ``meta``, fill it strictly from ``path`` (``options`` as :func:`load_checkpoint`),
    check nothing was left unloaded, and return it in eval mode."""
    with on_meta():
        module = build()
    load_checkpoint(module, path, **options)
    assert_materialised(module, f"{what} from {path}")
    return module.eval()


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def assign_state(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Assign tensors by module-relative name (parameters stay parameters). Names must exist in the module."""
    own = module.state_dict(keep_vars=True)
    unknown = set(state) - set(own)
    if unknown:
        raise CheckpointError(f"{source}: internal mapping produced unknown names {_listing(unknown)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: {key} has shape {list(value.shape)}, model expects {list(own[key].shape)}"
            )
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        old = getattr(owner, attr)
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(value, requires_grad=old.requires_grad))
        else:
            owner._buffers[attr] = value


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of parameters/buffers still on the meta device (i.e. never loaded)."""
    return [k for k, v in module.state_dict(keep_vars=True).items() if v.is_meta]


def assert_materialised(module: nn.Module, what: str) -> None:
    left = meta_tensors(module)
    if left:
        raise CheckpointError(f"{what}: {len(left)} tensor(s) were never loaded: {_listing(left)}")


@contextlib.contextmanager
def on_meta() -> Iterator[None]:
    """Build modules without allocating memory."""
    with torch.device("meta"):
        yield
