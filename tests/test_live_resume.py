"""The live clients' resume logic without a server: what is held and re-sent, which output is dropped after a
move, the uplink's order across a gap, and the bridge's raw-microphone fill (its timeline, hold and crossfade)."""

import asyncio

import numpy as np
import pytest

from metis_rt.bridge.gap_fill import HOLD, PROCESSED, RAW, GapFill, RawHistory
from metis_rt.clients import wire
from metis_rt.clients.live_resume import LiveStream, frames, parse_checkpoint
from metis_rt.clients.uplink import END, Uplink
from metis_rt.server.protocol import SessionReady, SessionResumed

READY = ("s1", 16000, 16000, "f32le", 100.0, 80)


def _resumed(acked: int, output: int) -> SessionResumed:
    return SessionResumed(*READY, input_samples_acked=acked, output_samples=output, resume_gap_ms=420.0)


def _checkpoint(acked: int, output: int, token: str = "t") -> dict:
    return {"type": "session.checkpoint", "token": token, "input_samples_acked": acked, "output_samples": output}


def test_checkpoint_parsing_refuses_malformed_events():
    assert parse_checkpoint(_checkpoint(10, 5)).input_samples_acked == 10
    for bad in ({}, {"token": "t", "input_samples_acked": "x", "output_samples": 1}, _checkpoint(-1, 0)):
        assert parse_checkpoint(bad) is None


def test_a_resume_re_sends_the_unacknowledged_input_and_drops_repeated_output():
    live = LiveStream(16000)
    x = np.arange(1000, dtype=np.float32)
    live.sent(x[:600])
    assert not live.on_checkpoint(_checkpoint(700, 0))  # acknowledges more than was sent: ignored
    assert live.on_checkpoint(_checkpoint(400, 300))
    live.sent(x[600:])
    assert np.array_equal(live.output(np.ones(500, np.float32)), np.ones(500))  # played up to 500
    replay = live.resumed(_resumed(400, 300))  # the new worker holds input to 400, output to 300
    np.testing.assert_array_equal(replay, x[400:])
    assert live.moves == 1 and live.last_gap_ms == 420.0 and live.lost_input_samples == 0
    again = np.arange(300, 560, dtype=np.float32)  # the new worker repeats 300..500, then goes on
    np.testing.assert_array_equal(live.output(again), again[200:])
    assert live.delivered == 560


def test_output_lost_with_the_old_worker_is_skipped_not_waited_for():
    live = LiveStream(16000)
    live.sent(np.zeros(800, np.float32))
    live.on_checkpoint(_checkpoint(800, 600))
    live.output(np.zeros(400, np.float32))  # 400..600 died with the old worker
    live.resumed(_resumed(800, 600))
    assert len(live.output(np.ones(50, np.float32))) == 50 and live.delivered == 650


def test_a_fresh_start_resets_the_counts_and_counts_what_was_lost():
    live = LiveStream(16000)
    live.sent(np.zeros(300, np.float32))
    live.output(np.zeros(100, np.float32))
    assert len(live.resumed(SessionReady(*READY))) == 0  # the new worker started afresh
    assert live.restarts == 1 and live.lost_input_samples == 300 and live.delivered == 0
    assert not live.can_resume


def test_held_input_is_bounded_and_a_longer_gap_is_reported():
    live = LiveStream(1000, hold_s=0.5)  # 500 samples
    live.sent(np.arange(800, dtype=np.float32))
    replay = live.resumed(_resumed(100, 0))
    assert len(replay) == 500 and live.lost_input_samples == 200


def test_frames_split_at_the_limit():
    assert [len(f) for f in frames(np.zeros(450, np.float32), 200)] == [200, 200, 50]


class RecordingSocket:
    """Takes frames like a connection; ``fail_after`` sends then raises ConnectionClosed."""

    def __init__(self, fail_after: int | None = None):
        self.sent: list = []
        self.fail_after = fail_after

    async def send(self, message) -> None:
        from websockets.exceptions import ConnectionClosedError

        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise ConnectionClosedError(None, None)
        self.sent.append(message)

    def audio(self) -> np.ndarray:
        return np.concatenate([wire.decode_audio(m, "f32le") for m in self.sent if isinstance(m, bytes)])


def test_uplink_sends_held_then_queued_then_gap_blocks_in_order_without_duplicates():
    async def body():
        live = LiveStream(1000)
        up = Uplink(live, queue_blocks=100, max_frame_samples=30, fmt="f32le")
        blocks = [np.full(10, i, np.float32) for i in range(12)]
        for b in blocks[:4]:
            up.push(b)
        first = RecordingSocket(fail_after=1)  # one frame (30 samples) goes out; the socket dies sending the next
        await up.send_loop(first)
        live.on_checkpoint(_checkpoint(20, 0))
        up.push(blocks[4])  # queued before the loss is noticed
        up.moving()
        for b in blocks[5:9]:
            up.push(b)  # captured during the gap
        up.resumed(live.resumed(_resumed(20, 0)))
        up.push(blocks[9])
        up.push(END)
        second = RecordingSocket()
        await up.send_loop(second)
        return live, up, first, second

    live, up, first, second = asyncio.run(body())
    x = np.concatenate([np.full(10, i, np.float32) for i in range(10)])
    np.testing.assert_array_equal(first.audio(), x[:30])
    np.testing.assert_array_equal(second.audio(), x[20:])  # after the ack at 20: everything, once, in order
    assert second.sent[-1] == wire.control_message("session.end")
    assert live.unacked.sent == 100 and up.dropped_samples == 0


def test_uplink_drops_the_oldest_blocks_of_a_gap_longer_than_the_hold():
    async def body():
        live = LiveStream(100, hold_s=0.3)  # 30 samples
        up = Uplink(live, queue_blocks=10, max_frame_samples=100, fmt="f32le")
        up.moving()
        for i in range(5):
            up.push(np.full(10, i, np.float32))
        up.resumed(live.resumed(_resumed(0, 0)))
        up.push(END)
        sock = RecordingSocket()
        await up.send_loop(sock)
        return up, sock

    up, sock = asyncio.run(body())
    assert up.dropped_samples == 20
    np.testing.assert_array_equal(sock.audio(), np.repeat(np.arange(2, 5, dtype=np.float32), 10))


def _gap(hop=40, fade=8):
    live = LiveStream(1000)
    return live, GapFill(live, RawHistory(1000, 1000, 10_000), fade=fade, hop=hop)


def test_the_gap_plays_the_raw_microphone_at_the_stream_positions_then_crossfades_back():
    live, gap = _gap()
    mic = np.arange(1000, dtype=np.float32)
    out = [gap.on_block(mic[0:20]), gap.on_block(mic[20:40])]  # connected: nothing raw
    assert sum(map(len, out)) == 0
    live.sent(mic[:40])
    played = gap.on_output(np.full(15, -1, np.float32))  # the server's output up to position 15
    gap.lost()
    raw = [gap.on_block(mic[i : i + 20]) for i in range(40, 100, 20)]  # three blocks while moving
    np.testing.assert_array_equal(np.concatenate(raw), mic[15:75])  # positions 15..75, the microphone's own
    assert gap.state == RAW and live.delivered == 75
    live.resumed(_resumed(0, 0))
    assert len(gap.on_output(np.full(60, -1, np.float32))) == 0  # 0..60: covered already
    tail = gap.on_output(np.full(30, -1, np.float32))  # 60..90: 75..90 plays, crossfaded from raw
    assert gap.state == PROCESSED and len(tail) == 15
    w = np.arange(1, 9, dtype=np.float32) / 9
    np.testing.assert_allclose(tail[:8], w * -1 + (1 - w) * mic[75:83], rtol=1e-6)
    np.testing.assert_array_equal(tail[8:], -1)
    assert len(played) == 15 and gap.raw_samples == 60


def test_a_resumed_worker_just_behind_the_fill_gets_a_hold_and_takes_over():
    live, gap = _gap(hop=40)
    mic = np.arange(2000, dtype=np.float32)
    gap.on_block(mic[:100])
    gap.lost()
    gap.on_block(mic[100:120])  # fills 0..20
    live.resumed(_resumed(0, 0))
    assert len(gap.on_output(np.zeros(10, np.float32))) == 0 and gap.state == HOLD  # 10 behind: within a hop
    assert len(gap.on_block(mic[120:140])) == 0  # the fill pauses
    assert len(gap.on_output(np.zeros(40, np.float32))) == 30 and gap.state == PROCESSED


def test_a_hold_that_lasts_two_hops_fills_again():
    live, gap = _gap(hop=20)
    gap.on_block(np.zeros(100, np.float32))
    gap.lost()
    gap.on_block(np.zeros(20, np.float32))
    live.resumed(_resumed(0, 0))
    gap.on_output(np.zeros(5, np.float32))
    assert gap.state == HOLD
    assert len(gap.on_block(np.zeros(20, np.float32))) == 0
    assert len(gap.on_block(np.zeros(20, np.float32))) == 20 and gap.state == RAW


def test_a_move_faster_than_a_block_leaves_the_processed_audio_untouched():
    live, gap = _gap()
    gap.on_block(np.zeros(100, np.float32))
    live.sent(np.zeros(100, np.float32))
    gap.on_output(np.full(30, 2, np.float32))
    gap.lost()
    live.resumed(_resumed(0, 0))
    out = gap.on_output(np.full(50, 2, np.float32))  # 0..30 again, then 30..50: no raw played, so no crossfade
    np.testing.assert_array_equal(out, np.full(20, 2, np.float32))
    assert gap.state == PROCESSED and gap.raw_samples == 0


@pytest.mark.parametrize("rates", [(48000, 48000), (16000, 48000)])
def test_raw_history_is_indexed_at_the_output_rate(rates):
    history = RawHistory(*rates, capacity=10 * rates[1])
    added = sum(history.push(np.ones(rates[0] // 50, np.float32)) for _ in range(10))
    held_back = rates[1] // 5 - added  # the resampler's lookahead holds back a few output samples, no more
    assert 0 <= held_back <= np.ceil(history.resampler.lookahead_s * rates[1]) + 1
    assert history.end == added and len(history.read(added - 5, 10)) == 10
    assert np.all(history.read(added, 5) == 0)  # not captured yet: silence


def test_raw_history_ring_reads_what_was_pushed_across_wraps():
    rng = np.random.default_rng(0)
    history = RawHistory(16000, 16000, capacity=1000)
    pushed = np.zeros(0, np.float32)
    for size in rng.integers(1, 700, 40):
        block = rng.standard_normal(size).astype(np.float32)
        history.push(block)
        pushed = np.concatenate([pushed, block])
        start = int(rng.integers(max(0, len(pushed) - 1200), len(pushed) + 50))
        n = int(rng.integers(0, 1100))
        expected = np.zeros(n, np.float32)  # what was pushed, where still within the last 1000 samples
        for k in range(max(start, len(pushed) - 1000), min(start + n, len(pushed))):
            expected[k - start] = pushed[k]
        np.testing.assert_array_equal(history.read(start, n), expected)
