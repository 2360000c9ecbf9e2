"""alsa-lib's own error printing, routed away from the terminal.

alsa-lib writes messages such as ``ALSA lib pcm.c:8740:(snd_pcm_recover) underrun occurred`` straight to the
process's stderr, which is where the bridge and the mic client draw their status line; PortAudio already
reports each under- and overrun to our callbacks, where it is counted. :func:`route_alsa_messages` installs an
error handler that counts alsa-lib's messages instead of printing them (``-vv`` logs each at DEBUG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

# void handler(const char *file, int line, const char *function, int err, const char *fmt, ...): the variadic tail is
# not read (the format's arguments stay unformatted), which is all a counter needs.
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)


class AlsaMessages:
    """How many messages alsa-lib emitted since :func:`route_alsa_messages` (per calling function)."""

    def __init__(self) -> None:
        self.count = 0
        self.by_function: dict[str, int] = {}

    def _on_message(self, file, line, function, err, fmt) -> None:
        name = (function or b"?").decode(errors="replace")
        self.count += 1
        self.by_function[name] = self.by_function.get(name, 0) + 1
        log.debug("alsa-lib %s: %s", name, (fmt or b"").decode(errors="replace"))


_installed: tuple[AlsaMessages, object] | None = None  # the handler must outlive every call alsa-lib makes to it


def route_alsa_messages() -> AlsaMessages | None:
    """Count alsa-lib's messages instead of printing them; None where alsa-lib is not present (not Linux)."""
    global _installed
    if _installed is not None:
        return _installed[0]
    name = ctypes.util.find_library("asound")
    if name is None:
        return None
    try:
        asound = ctypes.CDLL(name)
    except OSError:
        return None
    messages = AlsaMessages()
    handler = _HANDLER(messages._on_message)
    asound.snd_lib_error_set_handler(handler)
    _installed = (messages, handler)
    return messages
