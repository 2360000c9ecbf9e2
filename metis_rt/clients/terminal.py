"""The terminal side of the live clients: a status line redrawn in place, messages above it, single key presses.

On a TTY the status line is redrawn with a carriage return; elsewhere (a pipe, a log file) status lines go to the
DEBUG log and only messages are written. Keys are read in cbreak mode (no Enter needed) from a TTY stdin, through
the event loop's reader (no thread); the terminal mode is restored on exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TextIO

log = logging.getLogger(__name__)

CLEAR_LINE = "\r\x1b[K"
KEY_QUEUE_ITEMS = 32  # unread key presses beyond this are ignored


class KeyReader:
    """Single key presses from a TTY file descriptor (POSIX); use as a context manager inside the event loop."""

    def __init__(self, fd: int):
        self.fd = fd
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=KEY_QUEUE_ITEMS)
        self._saved = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> KeyReader:
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)
        return self

    def __exit__(self, *exc) -> None:
        import termios

        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            self._loop.remove_reader(self.fd)
            return
        for key in data.decode(errors="ignore"):
            if not self.queue.full():
                self.queue.put_nowait(key)

    async def keys(self) -> AsyncIterator[str]:
        while True:
            yield await self.queue.get()


def cbreak_keys(stdin: TextIO) -> KeyReader | None:
    """A key reader for ``stdin`` when it is a terminal (and the platform has termios), else None."""
    try:
        import termios  # noqa: F401
    except ImportError:
        return None
    try:
        if not stdin.isatty():
            return None
        return KeyReader(stdin.fileno())
    except (OSError, ValueError):
        return None


class StatusDisplay:
    """A status line plus messages on ``stream``; owns the optional key reader (entered with the display)."""

    def __init__(self, stream: TextIO, keys: KeyReader | None = None):
        self.stream = stream
        self.tty = _isatty(stream)
        self._keys = keys
        self._line = ""

    @property
    def interactive_keys(self) -> bool:
        return self._keys is not None

    def __enter__(self) -> StatusDisplay:
        if self._keys is not None:
            self._keys.__enter__()
            self.message("keys: b bypass, m/M mix down/up, q quit")
        return self

    def __exit__(self, *exc) -> None:
        if self._keys is not None:
            self._keys.__exit__(*exc)
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()

    def status(self, line: str) -> None:
        self._line = line
        if self.tty:
            self.stream.write(CLEAR_LINE + line)
            self.stream.flush()
        else:
            log.debug("%s", line)

    def message(self, text: str) -> None:
        if self.tty:
            self.stream.write(CLEAR_LINE + text + "\n" + self._line)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    async def keys(self) -> AsyncIterator[str]:
        if self._keys is None:
            return
        async for key in self._keys.keys():
            yield key


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
