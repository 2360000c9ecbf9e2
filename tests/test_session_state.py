"""Stream state across a move: a session restored from another's checkpoint continues its output exactly (the
streaming-equals-offline test's twin), and the state's byte format refuses what it cannot read."""

import numpy as np
import pytest
import torch

from metis_rt.config import TaskDecoding
from metis_rt.streaming import state_blob
from metis_rt.streaming.config import EngineConfig
from metis_rt.streaming.geometry import Geometry, GeometryConfig
from metis_rt.streaming.session import SessionSpec, StreamSession
from metis_rt.streaming.session_state import StateMismatch, StreamState
from metis_rt.streaming.window import WindowJob, WindowResult

SMALL = GeometryConfig(
    chunk_ms=160, lookahead_ms=80, left_context_ms=480, s2a_left_context_ms=320, decoder_left_context_ms=160
)
Q = 3


class HistoryProcessor:
    """A stand-in model whose output depends on everything a session carries: the window's audio, the committed
    left-context tokens (stage 1, S2A, decoder) and the sampling noise. Restoring any part wrongly changes it."""

    num_quantizers = Q

    def run(self, jobs: list[WindowJob]) -> list[WindowResult]:
        return [self._one(j) for j in jobs]

    def _one(self, job: WindowJob) -> WindowResult:
        frames = job.audio_16k[: job.target * 320].reshape(-1, 320)[-job.target :]
        noise = job.noise.gumbel(torch.Size([job.target]), torch.zeros(1)).numpy()
        history = int(job.left_semantic.sum() + job.s2a_acoustic.sum() + 3 * job.decoder_acoustic.sum())
        semantic = (np.abs(frames).sum(1) * 1000).astype(np.int64) % 97 + history % 13 + (noise > 0)
        acoustic = np.stack([semantic % (7 + q) for q in range(Q)], axis=1)
        gain = 1.0 + 0.01 * (history % 11) + 0.001 * np.tanh(noise).mean()
        return WindowResult(semantic, acoustic, (job.dry_24k * gain).astype(np.float32))


def _session(rate_in, rate_out, deterministic=True):
    spec = SessionSpec("se", rate_in, rate_out, TaskDecoding(), deterministic=deterministic, seed=7)
    return StreamSession(1, spec, Geometry.from_config(SMALL), EngineConfig(), Q)


def _drain(session, processor):
    while (job := session.take_window()) is not None:
        session.complete(job, processor.run([job])[0], 0.0)


def _feed(session, processor, x, packet):
    for i in range(0, len(x), packet):
        session.push(x[i : i + packet], now=0.0)
        _drain(session, processor)


def _signal(rate, seconds=2.0):
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(3)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize(
    ("rate_in", "rate_out", "deterministic", "move_at_s"),
    [(16000, 16000, True, 0.9), (44100, 48000, True, 1.13), (16000, 24000, False, 0.7)],
)
def test_a_restored_session_continues_the_output_exactly(rate_in, rate_out, deterministic, move_at_s):
    processor, x = HistoryProcessor(), _signal(rate_in)
    packet = rate_in // 50

    whole = _session(rate_in, rate_out, deterministic)
    _feed(whole, processor, x, packet)
    whole.finish()
    _drain(whole, processor)
    expected = whole.read_output()

    first = _session(rate_in, rate_out, deterministic)
    cut = int(move_at_s * rate_in)
    _feed(first, processor, x[:cut], packet)
    taken = []
    first.checkpoint(taken.append)
    assert len(taken) == 1  # no hop in flight: taken at once
    blob = taken[0].to_bytes()
    before = first.read_output()
    # the old worker goes on a little (output the client will drop) before it is lost
    _feed(first, processor, x[cut : cut + packet * 5], packet)

    state = StreamState.from_bytes(blob)
    assert state.input_samples == cut and state.output_samples == len(before)
    second = _session(rate_in, rate_out, deterministic)
    second.restore(state)
    _feed(second, processor, x[state.input_samples :], packet + 17)  # other packet sizes on the new worker
    second.finish()
    _drain(second, processor)
    moved = np.concatenate([before[: state.output_samples], second.read_output()])

    assert len(expected) == round(len(x) * rate_out / rate_in)
    assert len(moved) == len(expected)
    np.testing.assert_array_equal(moved, expected)


def test_a_checkpoint_asked_while_a_hop_runs_is_taken_when_it_completes():
    processor, x = HistoryProcessor(), _signal(16000, 1.0)
    session = _session(16000, 16000)
    session.push(x, now=0.0)
    job = session.take_window()
    taken = []
    session.checkpoint(taken.append)
    assert taken == []
    session.complete(job, processor.run([job])[0], 0.0)
    assert len(taken) == 1
    assert taken[0].hop == 1 and taken[0].output_samples == len(session.read_output())


def test_restore_refuses_another_spec_or_model_size():
    processor, x = HistoryProcessor(), _signal(16000, 1.0)
    session = _session(16000, 16000)
    _feed(session, processor, x, 320)
    taken = []
    session.checkpoint(taken.append)
    with pytest.raises(StateMismatch, match="cannot continue"):
        _session(16000, 24000).restore(taken[0])
    other = StreamSession(2, session.spec, session.geometry, EngineConfig(), Q + 1)
    with pytest.raises(StateMismatch, match="layers"):
        other.restore(taken[0])


def test_state_blob_round_trip_and_refusals():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    meta, back = state_blob.unpack(state_blob.pack({"k": 1}, arrays))
    assert meta == {"k": 1}
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
    blob = state_blob.pack({}, arrays)
    for bad in (blob[:-1], blob + b"x", b"\x00\x00\x00\x05{}", b"\xff\xff\xff\xff"):
        with pytest.raises(state_blob.StateBlobError):
            state_blob.unpack(bad)
    with pytest.raises(state_blob.StateBlobError, match="not storable"):
        state_blob.pack({}, {"o": np.array([object()])})
