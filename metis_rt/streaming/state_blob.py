"""A typed, safe byte format for stream state: a JSON header plus named numpy arrays. Pure code.

Resume tokens carry stream state across the network, so the format must never execute anything it reads (no
pickle, no ``np.load(allow_pickle=True)``): the header is JSON, the arrays are raw little-endian bytes of a few
whitelisted dtypes with declared shapes, and every length is checked against the data before it is used::

    header length u32 (big endian) | header JSON | array bytes, concatenated in header order

    header = {"meta": {...}, "arrays": [{"name": str, "dtype": str, "shape": [int, ...]}, ...]}
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

DTYPES = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8"), "<i8": np.dtype("<i8"), "|u1": np.dtype("u1")}
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 4
_LENGTH = struct.Struct(">I")


class StateBlobError(ValueError):
    """Bytes that are not a state blob (or not one this code can read)."""


def pack(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """``meta`` (JSON-serialisable) and ``arrays`` (name -> array of a DTYPES dtype) as bytes."""
    entries, chunks = [], []
    for name, array in arrays.items():
        a = np.ascontiguousarray(array)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        key = dtype.str
        if key not in DTYPES:
            raise StateBlobError(f"array {name!r}: dtype {a.dtype} not storable (use one of {', '.join(DTYPES)})")
        entries.append({"name": name, "dtype": key, "shape": list(a.shape)})
        chunks.append(a.astype(DTYPES[key], copy=False).tobytes())
    header = json.dumps({"meta": dict(meta), "arrays": entries}, separators=(",", ":")).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise StateBlobError(f"state header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return _LENGTH.pack(len(header)) + header + b"".join(chunks)


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of a blob made by :func:`pack`; StateBlobError for anything else."""
    if len(data) < _LENGTH.size:
        raise StateBlobError("state blob shorter than its length prefix")
    (header_len,) = _LENGTH.unpack_from(data)
    if header_len > MAX_HEADER_BYTES or _LENGTH.size + header_len > len(data):
        raise StateBlobError(f"state header length {header_len} out of range")
    try:
        header = json.loads(data[_LENGTH.size : _LENGTH.size + header_len])
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateBlobError("state header is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
        raise StateBlobError("state header lacks its meta object")
    entries = header.get("arrays")
    if not isinstance(entries, list):
        raise StateBlobError("state header lacks its array list")
    offset, arrays = _LENGTH.size + header_len, {}
    for entry in entries:
        name, dtype, shape = _entry(entry)
        nbytes = dtype.itemsize * math.prod(shape)
        if offset + nbytes > len(data):
            raise StateBlobError(f"array {name!r} runs past the end of the state")
        arrays[name] = np.frombuffer(data, dtype, math.prod(shape), offset).reshape(shape).copy()
        offset += nbytes
    if offset != len(data):
        raise StateBlobError(f"{len(data) - offset} bytes after the last array")
    return header["meta"], arrays


def _entry(entry: object) -> tuple[str, np.dtype, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise StateBlobError("array entry is not an object")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    if not isinstance(name, str) or dtype not in DTYPES:
        raise StateBlobError(f"array entry with a bad name or dtype: {str(entry)[:80]}")
    ok = isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and d >= 0 for d in shape)
    if not ok:
        raise StateBlobError(f"array {name!r}: bad shape")
    return name, DTYPES[dtype], tuple(shape)
