"""Where a *live* stream stands across connections (pure: no sockets, no clock): the mic client and the bridge.

A live client cannot replay its input from a file: it keeps what the server has not acknowledged
(:class:`~metis_rt.clients.resume.UnackedInput`, bounded) and the latest ``session.checkpoint``. After a move the
new worker continues from the checkpoint: the client re-sends the input after ``input_samples_acked`` and the
server produces the output from ``output_samples`` on again. Output positions are absolute stream indices, so
output the client already played (or covered otherwise, see :meth:`LiveStream.cover`) is dropped once, and
playback continues where it stood: nothing is played twice, nothing out of order.

Without a checkpoint, or when the new worker refuses the token, the stream starts afresh (:meth:`afresh`): the
server's counts restart at zero, and so do ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from metis_rt.clients.resume import UnackedInput
from metis_rt.server.protocol import SessionReady, SessionResumed

DEFAULT_HOLD_S = 10.0  # un-acknowledged input a live client keeps (checkpoints come about once a second)


@dataclass(frozen=True)
class Checkpoint:
    """The latest ``session.checkpoint``: its token and where the stream stood."""

    token: str
    input_samples_acked: int
    output_samples: int


def parse_checkpoint(event: dict[str, Any]) -> Checkpoint | None:
    """A ``session.checkpoint`` event -> Checkpoint; None when malformed."""
    try:
        checkpoint = Checkpoint(str(event["token"]), int(event["input_samples_acked"]), int(event["output_samples"]))
    except (KeyError, TypeError, ValueError):
        return None
    if checkpoint.input_samples_acked < 0 or checkpoint.output_samples < 0:
        return None
    return checkpoint


class LiveStream:
    """Input held for a resume, the latest checkpoint, and the output position, across connections."""

    def __init__(self, input_rate: int, hold_s: float = DEFAULT_HOLD_S):
        self.input_rate = input_rate
        self.hold_samples = max(1, round(hold_s * input_rate))
        self.unacked = UnackedInput(self.hold_samples)
        self.checkpoint: Checkpoint | None = None
        self.delivered = 0  # stream index of the next output sample to hand on (played or covered)
        self.connection_out = 0  # stream index of the next output sample this connection sends
        self.moves = 0  # reconnections after a lost or drained connection
        self.restarts = 0  # of them, started afresh (no checkpoint, or the token was refused)
        self.lost_input_samples = 0  # input given up: held longer than hold_s, or lost with a fresh start
        self.last_gap_ms: float | None = None  # the server's resume_gap_ms of the last resume
        self.resumed_at: int | None = None  # input_samples_acked of the last resume: where the stream continued

    # --- the running connection -----------------------------------------------------------------------
    def sent(self, samples: np.ndarray) -> None:
        """Input just sent: keep it until a checkpoint acknowledges it."""
        self.unacked.record(samples)

    def on_checkpoint(self, event: dict[str, Any]) -> bool:
        """A ``session.checkpoint``: keep it (the input before its ack is forgotten); False when unusable."""
        checkpoint = parse_checkpoint(event)
        if checkpoint is None or checkpoint.input_samples_acked > self.unacked.sent:
            return False
        self.checkpoint = checkpoint
        self.unacked.ack(checkpoint.input_samples_acked)
        return True

    def output(self, samples: np.ndarray) -> np.ndarray:
        """Output from the server -> the part not handed on yet (after a move, the new worker repeats some)."""
        start = self.connection_out
        self.connection_out += len(samples)
        skip = min(len(samples), max(0, self.delivered - start))
        if start > self.delivered:  # output lost on the way (the old worker died with it): continue from here
            self.delivered = start
        self.delivered += len(samples) - skip
        return samples[skip:]

    def cover(self, samples: int) -> None:
        """``samples`` output positions were filled by something else (the bridge's raw microphone during a gap):
        the server's output for them will be dropped."""
        self.delivered += samples

    # --- moving -------------------------------------------------------------------------------------------
    @property
    def can_resume(self) -> bool:
        return self.checkpoint is not None

    def resume_token(self) -> str | None:
        """The token to resume with (None: start afresh)."""
        return None if self.checkpoint is None else self.checkpoint.token

    def refused(self) -> None:
        """The new worker refused the token: the next attempt starts afresh."""
        self.checkpoint = None

    def resumed(self, ready: SessionReady) -> np.ndarray:
        """The new connection's answer: ``session.resumed`` -> the held input to re-send; ``session.ready`` (a fresh
        start) -> nothing to re-send."""
        self.moves += 1
        if not isinstance(ready, SessionResumed):
            self.afresh()
            return np.zeros(0, np.float32)
        self.connection_out = ready.output_samples
        self.last_gap_ms = ready.resume_gap_ms
        self.resumed_at = ready.input_samples_acked
        replay, gap = self.unacked.replay_from(ready.input_samples_acked)
        self.lost_input_samples += gap
        return replay

    def afresh(self) -> None:
        """A fresh session: its sample counts start at zero; what the old one held is gone."""
        self.restarts += 1
        self.lost_input_samples += self.unacked.sent - self.unacked.oldest
        self.checkpoint = None
        self.unacked = UnackedInput(self.hold_samples)
        self.delivered = self.connection_out = 0


def frames(samples: np.ndarray, max_samples: int) -> list[np.ndarray]:
    """Split input to re-send into frames of at most ``max_samples`` (the protocol caps a frame at one second)."""
    return [samples[i : i + max_samples] for i in range(0, len(samples), max(1, max_samples))]
