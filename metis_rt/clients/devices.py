"""Sound devices through sounddevice (PortAudio), imported lazily so that the rest of metis-rt never needs it.

Device choice and rate choice are pure functions over ``sounddevice.query_devices()`` records (dicts with
``name``, ``max_input_channels``, ``max_output_channels``, ``default_samplerate``), testable without PortAudio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from metis_rt.errors import MetisError
from metis_rt.server.protocol import MAX_RATE, MIN_RATE

FALLBACK_RATE_HZ = 48000  # when a device reports no usable default rate
KINDS = ("input", "output")


class AudioDeviceError(MetisError):
    """No usable sound device (PortAudio missing, no device, a name that matches nothing...)."""


def load_sounddevice():
    """``import sounddevice``, or an :class:`AudioDeviceError` that says what to install."""
    try:
        import sounddevice
    except ImportError as exc:
        raise AudioDeviceError("the sounddevice package is not installed: pip install sounddevice") from exc
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        raise AudioDeviceError(
            f"no audio: the PortAudio library is not available ({exc}); "
            "install it (Debian/Ubuntu: apt-get install libportaudio2, macOS: brew install portaudio)"
        ) from exc
    return sounddevice


def query(sd) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """All devices and the (input, output) default indices (-1 where there is none)."""
    devices = [dict(d) for d in sd.query_devices()]
    default_in, default_out = (int(i) if i is not None else -1 for i in sd.default.device)
    return devices, (default_in, default_out)


def describe(devices: Sequence[dict[str, Any]], defaults: tuple[int, int]) -> str:
    """A table for ``--list-devices``; ``>`` marks the default input, ``<`` the default output."""
    if not devices:
        return "no audio devices found (PortAudio sees none)"
    lines = ["  #  in out  rate   name"]
    for index, d in enumerate(devices):
        mark = (">" if index == defaults[0] else " ") + ("<" if index == defaults[1] else " ")
        lines.append(
            f"{mark}{index:>2} {d['max_input_channels']:>3} {d['max_output_channels']:>3} "
            f"{d['default_samplerate']:>6.0f}  {d['name']}"
        )
    return "\n".join(lines)


def find_device(devices: Sequence[dict[str, Any]], spec: str | None, kind: str, default: int) -> int:
    """Index of the device for ``--input``/``--output`` ``spec``: None = the default, an integer = that index, else a
    case-insensitive name substring (an exact name wins over substrings). Only devices with ``kind`` channels count."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    channels = f"max_{kind}_channels"
    usable = [i for i, d in enumerate(devices) if d[channels] > 0]
    hint = f"see --list-devices ({len(usable)} {kind} device(s) found)"
    if spec is None:
        if default < 0 or default not in usable:
            raise AudioDeviceError(f"no default {kind} device; choose one with --{kind} NAME or INDEX, {hint}")
        return default
    text = spec.strip()
    if text.isdigit():
        index = int(text)
        if index not in usable:
            raise AudioDeviceError(f"--{kind} {index}: there is no {kind} device with that index; {hint}")
        return index
    exact = [i for i in usable if devices[i]["name"].lower() == text.lower()]
    if exact:
        return exact[0]
    partial = [i for i in usable if text.lower() in devices[i]["name"].lower()]
    if not partial:
        raise AudioDeviceError(f"--{kind} {spec!r}: no {kind} device name contains it; {hint}")
    if len(partial) > 1:
        names = ", ".join(f"{i}: {devices[i]['name']!r}" for i in partial)
        raise AudioDeviceError(f"--{kind} {spec!r} matches several {kind} devices ({names}); give the index")
    return partial[0]


def choose_rate(requested: int | None, device: dict[str, Any]) -> int:
    """``--rate`` if given, else the device's default rate when the protocol accepts it, else 48 kHz."""
    if requested is not None:
        return requested
    rate = round(float(device.get("default_samplerate") or 0))
    return rate if MIN_RATE <= rate <= MAX_RATE else FALLBACK_RATE_HZ


@contextlib.contextmanager
def open_stream(factory, role: str, device: int | None, rate: int, callback, block_ms: int = 20):
    """A started mono float32 stream (``sd.InputStream``/``sd.OutputStream``) in blocks of ``block_ms``; closed on
    exit. PortAudio errors become an :class:`AudioDeviceError` naming the ``role`` and what to try."""
    stream = None
    try:
        stream = factory(
            device=device,
            samplerate=rate,
            channels=1,
            dtype="float32",
            blocksize=rate * block_ms // 1000,
            latency="low",
            callback=callback,
        )
        stream.start()
    except Exception as exc:  # sounddevice.PortAudioError, ValueError for settings the device refuses
        if stream is not None:
            stream.close(ignore_errors=True)
        raise AudioDeviceError(
            f"cannot open the {role} device #{device} at {rate} Hz: {exc}; "
            "try another --rate or device (see --list-devices)"
        ) from exc
    try:
        yield stream
    finally:
        stream.close(ignore_errors=True)
