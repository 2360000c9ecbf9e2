"""Issue 20: the CPU thread count of a hop is measured on the loaded models (``speed.threads: auto``)."""

import json

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from metis_rt.config import from_dict
from metis_rt.errors import ConfigError
from metis_rt.models import thread_choice
from metis_rt.models.hop_speed import BASELINE, HopSpeed
from metis_rt.models.thread_choice import ThreadPlan, pick, resolve_threads, thread_candidates, time_candidates


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_pick_takes_a_larger_count_only_when_it_is_clearly_faster():
    assert pick({1: 0.059, 2: 0.128}) == 1  # small models: the fork/join costs more than it splits
    assert pick({1: 0.900, 2: 0.500, 4: 0.300}) == 4  # large models: every core helps
    assert pick({1: 0.100, 2: 0.095}) == 1  # 5 % is a tie: fewer threads
    assert pick({1: 0.100, 2: 0.080, 4: 0.078}) == 2


def test_candidates_are_one_half_and_all_cores_but_one():
    assert thread_candidates(16) == [1, 8, 15]
    assert thread_candidates(4) == [1, 2, 3]
    assert thread_candidates(2) == [1]  # one core for the engine, one for the server's event loop
    assert thread_candidates(1) == [1]


def test_candidates_alternate_and_the_thread_count_is_restored():
    torch.set_num_threads(1)
    seen = []

    def probe():
        seen.append(torch.get_num_threads())
        return 0.01 * torch.get_num_threads()

    medians = time_candidates(probe, [1, 2])
    assert seen == [1, 2] + [1, 2] * thread_choice.REPEATS  # warm-up, then interleaved repeats
    assert medians == ({1: pytest.approx(0.01), 2: pytest.approx(0.02)}, False)
    assert torch.get_num_threads() == 1


def test_a_slow_probe_is_timed_once_per_candidate():
    seen = []

    def probe():
        seen.append(torch.get_num_threads())
        return thread_choice.SLOW_PROBE_S + 1

    time_candidates(probe, [1, 2])
    assert seen == [1, 2, 1, 2]


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.mark.parametrize("setting", ["auto", 3])
def test_a_managed_cpu_plan_holds_numpys_blas_to_one_thread_and_the_baseline_does_not(setting, monkeypatch):
    assert _blas_threads(), "numpy's BLAS is not visible to threadpoolctl: nothing would be limited"
    with threadpool_limits(limits=2, user_api="blas"):  # restored afterwards, whatever the test does
        monkeypatch.setattr(thread_choice, "_blas_limited", False)
        resolve_threads("default", torch.device("cpu"))
        resolve_threads(setting, torch.device("cuda"), lambda: ThreadPlan(((0, 1),)))
        assert _blas_threads() == [2] * len(_blas_threads())  # the baseline and GPU engines leave numpy alone
        resolve_threads(setting, torch.device("cpu"), lambda: ThreadPlan(((0, 1),)))
        assert _blas_threads() == [1] * len(_blas_threads())


def test_settings_resolve_to_plans():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_threads(3, cpu) == ThreadPlan(((0, 3),)) == resolve_threads(3, cuda)
    assert resolve_threads("default", cpu).threads_for(10**6) == thread_choice.DEFAULT_THREADS
    measured = ThreadPlan(((0, 1), (800, 2)))
    assert resolve_threads("auto", cpu, lambda: measured) is measured
    assert resolve_threads("auto", cuda, lambda: measured) is None  # the GPU does the work: torch's setting stays
    assert measured.apply(100) == 1 and torch.get_num_threads() == 1
    assert measured.apply(900) == 2 and torch.get_num_threads() == 2
    assert measured.describe() == "1 from 0 frames, 2 from 800 frames" and ThreadPlan(((0, 1),)).describe() == "1"


def test_speed_threads_setting_is_checked():
    assert HopSpeed().threads == "auto" and BASELINE.threads == "default"
    assert HopSpeed(threads=2).with_threads(None).threads == 2 and HopSpeed().with_threads(3).threads == 3
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ValueError, match="speed.threads"):
            HopSpeed(threads=bad)
    assert from_dict(HopSpeed, {"threads": 4}).threads == 4
    assert from_dict(HopSpeed, {"threads": "auto"}).threads == "auto"
    with pytest.raises(ConfigError, match="threads"):
        from_dict(HopSpeed, {"threads": "lots"})


def _tiny_components():
    from metis_rt.pipeline.components import load_components, resolve_config
    from tests.conftest import PARITY_DIR

    cfg, _ = resolve_config(PARITY_DIR / "se", "se")
    return load_components(PARITY_DIR / "se", ["se"], cfg)


def test_a_measured_plan_is_kept_on_disk_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(thread_choice, "_chosen", {})
    runs = []

    def probe_for(batch):
        def probe():
            runs.append(batch)
            return 0.01 * batch * (1 if torch.get_num_threads() == 1 else 0.5 if batch > 1 else 2)

        return probe, 100 * batch

    cache = tmp_path / "plans.json"
    plan = thread_choice.measured_plan("k", probe_for, [1, 2], cache)
    assert plan.steps == ((0, 1), (282, 2))  # one window: 1 thread; eight: 2 threads; switch at sqrt(100 * 800)
    assert plan.threads_for(100) == 1 and plan.threads_for(281) == 1 and plan.threads_for(282) == 2
    assert set(runs) == {1, 8}
    monkeypatch.setattr(thread_choice, "_chosen", {})  # a new process
    runs.clear()
    assert thread_choice.measured_plan("k", probe_for, [1, 2], cache) == plan and not runs
    cache.write_text("{not json")  # a broken file is measured again and rewritten
    monkeypatch.setattr(thread_choice, "_chosen", {})
    assert thread_choice.measured_plan("k", probe_for, [1, 2], cache) == plan and runs
    assert "k" in json.loads(cache.read_text())


def test_more_work_never_gets_fewer_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(thread_choice, "_chosen", {})

    def probe_for(batch):  # a noisy machine: 2 threads win on one window, 1 thread "wins" on eight
        return (lambda: 0.01 * (2 if (torch.get_num_threads() == 1) == (batch == 1) else 1)), 100 * batch

    plan = thread_choice.measured_plan("noisy", probe_for, [1, 2], tmp_path / "plans.json")
    assert plan.steps == ((0, 2),)


def test_nothing_to_choose_runs_no_probe_and_keeps_nothing(tmp_path):
    def probe_for(batch):
        raise AssertionError("probed with one candidate")

    cache = tmp_path / "plans.json"
    assert thread_choice.measured_plan("one", probe_for, [1], cache).steps == ((0, 1),)
    assert not cache.exists()


def test_plan_keys_change_with_the_settings():
    assert thread_choice.plan_key("arch", "se", 4) == thread_choice.plan_key("arch", "se", 4)
    assert thread_choice.plan_key("arch", "se", 4) != thread_choice.plan_key("arch", "se", 1)


def test_a_processor_measures_its_own_hops_and_applies_the_plan_per_step(monkeypatch, tmp_path):
    """The probe runs real windows through the processor's own run(); each step then gets its plan's count."""
    from metis_rt.streaming.processor import MetisWindowProcessor

    monkeypatch.setattr(thread_choice, "_chosen", {})
    monkeypatch.setenv("METIS_RT_CACHE_DIR", str(tmp_path))  # no plan kept by earlier tests
    monkeypatch.setattr(thread_choice, "PROBE_BATCHES", (1,))
    monkeypatch.setattr(thread_choice, "thread_candidates", lambda: [1, 2])  # something to measure on any machine
    calls = []
    original = MetisWindowProcessor.run

    def counting_run(self, jobs):
        calls.append(len(jobs))
        return original(self, jobs)

    monkeypatch.setattr(MetisWindowProcessor, "run", counting_run)
    processor = MetisWindowProcessor(_tiny_components())
    assert calls == [1] * ((1 + thread_choice.REPEATS) * 2)  # warm-up + repeats per candidate, one window each
    assert (tmp_path / thread_choice.PLAN_FILE).is_file()
    assert processor.threads is not None and torch.get_num_threads() == processor.threads.threads_for(100)
    fixed = MetisWindowProcessor(_tiny_components(), HopSpeed(threads=1))
    assert fixed.threads.steps == ((0, 1),)
