"""The client's resume bookkeeping: un-acknowledged input re-sent exactly, bounded memory, reconnect backoff."""

import numpy as np
import pytest

from metis_rt.clients.resume import Backoff, UnackedInput


def _signal(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)


def test_replay_resends_exactly_what_the_server_did_not_acknowledge():
    buf = UnackedInput(capacity_samples=10_000)
    sent = 0
    for size in (160, 37, 480, 1, 999):  # packets of any size
        buf.record(_signal(size, sent))
        sent += size
    buf.ack(500)
    replay, gap = buf.replay_from(700)  # the checkpoint the new worker resumed from
    assert gap == 0
    np.testing.assert_array_equal(replay, _signal(sent - 700, 700))
    assert buf.oldest == 700 and buf.sent == sent


def test_a_stale_ack_after_a_newer_one_changes_nothing():
    buf = UnackedInput(capacity_samples=1000)
    buf.record(_signal(300))
    buf.ack(200)
    buf.ack(100)
    replay, gap = buf.replay_from(150)  # older than what is held: nothing older is there to send
    assert buf.oldest == 200
    np.testing.assert_array_equal(replay, _signal(100, 200))
    assert gap == 50


def test_memory_is_bounded_and_what_was_given_up_is_reported_as_a_gap():
    buf = UnackedInput(capacity_samples=1000)
    for i in range(10):
        buf.record(_signal(400, 400 * i))
    assert buf.sent == 4000 and buf.oldest == 3000 and buf.dropped_samples == 3000
    replay, gap = buf.replay_from(2500)
    assert gap == 500
    np.testing.assert_array_equal(replay, _signal(1000, 3000))


def test_an_ack_beyond_what_was_sent_is_refused():
    buf = UnackedInput(capacity_samples=100)
    buf.record(_signal(10))
    with pytest.raises(ValueError, match="only 10 were sent"):
        buf.ack(11)


def test_backoff_grows_is_capped_honours_retry_after_and_gives_up():
    b = Backoff(base_s=0.1, cap_s=1.0, max_total_s=3.0, seed=1)
    waits = []
    while (w := b.next_wait_s()) is not None:
        waits.append(w)
    assert all(0 < w <= 1.0 for w in waits)
    assert waits[0] <= 0.1 and max(waits) > 0.5  # grows from the base towards the cap
    assert sum(waits) == pytest.approx(3.0)
    b.succeeded()
    assert b.next_wait_s(retry_after_s=0.8) >= 0.8
    assert Backoff(cap_s=1.0, seed=0).next_wait_s(retry_after_s=60) == 1.0  # a hostile Retry-After stays capped
