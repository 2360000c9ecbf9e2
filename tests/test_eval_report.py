"""``metis-rt eval --quick`` end to end (the quick evaluation set, every system incl. the tiny metis model), and the
report's pure parts (confidence intervals, item choice)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from metis_rt.cli import main
from metis_rt.errors import ConfigError
from metis_rt.eval.report import mean_ci
from metis_rt.eval.runner import QUICK_PER_TASK, pick_items


def test_mean_ci_is_the_t_interval_of_the_mean():
    mean, half, n = mean_ci([1.0, 2.0, 3.0, math.nan, None])
    assert (mean, n) == (2.0, 3)
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([5.0])[:2] == (5.0, pytest.approx(math.nan, nan_ok=True))
    assert mean_ci([]) == (pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True), 0)


def test_quick_picks_a_fixed_number_per_task_in_id_order():
    items = [{"id": f"{t}{i:02d}", "task": t} for t in ("se", "tse", "vc") for i in range(10, 0, -1)]
    picked = pick_items({"items": items}, quick=True, tasks=None)
    assert [i["id"] for i in picked if i["task"] == "se"] == ["se01", "se02", "se03"]
    assert len(picked) == sum(QUICK_PER_TASK.values())
    assert len(pick_items({"items": items}, quick=False, tasks=("vc",))) == 10


def test_per_task_is_a_fixed_sample_of_each_tasks_items():
    items = [{"id": f"{t}{i:02d}", "task": t} for t in ("se", "vc") for i in range(30)]
    picked = pick_items({"items": items}, quick=False, tasks=None, per_task=6)
    assert picked == pick_items({"items": list(reversed(items))}, quick=False, tasks=None, per_task=6)  # same draw
    se = [int(i["id"][2:]) for i in picked if i["task"] == "se"]
    assert len(se) == 6 == len(set(se)) and se == sorted(se) and max(se) - min(se) > 10  # not one block
    assert len(pick_items({"items": items}, quick=False, tasks=("vc",), per_task=50)) == 30  # fewer than N: all
    with pytest.raises(ConfigError, match="per-task"):
        pick_items({"items": items}, quick=False, tasks=None, per_task=0)


@pytest.fixture(scope="module")
def quick_report(combined_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    code = main(["eval", "--quick", "--model-dir", str(combined_model_dir), "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_quick_eval_writes_the_report_tables_csv_and_plots(quick_report):
    report = (quick_report / "report.md").read_text()
    assert "architecture is not the official Metis" in report  # random weights are called out in the header
    systems = ["unprocessed", "rnnoise", "spectral_gating", "deepfilternet3", "deepfilternet3-stream", "metis-offline"]
    systems += ["metis-stream-160-80", "metis-stream-240-160", "metis-stream-480-240"]
    for heading in ("## SE", "## TSE", "## VC", "DNSMOS OVRL", "PESQ", "SI-SDR", *systems):
        assert heading in report, heading
    with (quick_report / "clips.csv").open() as f:
        rows = list(csv.DictReader(f))
    # systems that apply: the denoisers skip VC, the streamed DeepFilterNet3 runs SE only
    per_task = {"se": 9, "tse": 8, "vc": 5}
    assert len(rows) == sum(QUICK_PER_TASK[t] * n for t, n in per_task.items())
    unprocessed_se = [r for r in rows if r["system"] == "unprocessed" and r["task"] == "se"]
    assert all(-10 < float(r["si_sdr"]) < 30 for r in unprocessed_se)  # input vs clean: the set's SNR range
    assert all(1.0 <= float(r["dnsmos_ovrl"]) <= 5.0 for r in rows if r["dnsmos_ovrl"])


def test_quick_eval_plots_render(quick_report):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    names = ["quality_vs_snr.png", "quality_vs_latency.png"]
    names += sorted(p.name for p in quick_report.glob("spectrogram_*.png"))
    assert len(names) >= 2 + 3  # SE, TSE and VC clips' spectrograms
    for name in names:
        image = mpimg.imread(quick_report / name)
        assert image.shape[0] > 300 and image.shape[1] > 600, (name, image.shape)
        assert np.std(image[..., :3]) > 0.05, name  # drawn, not blank
        assert f"]({name})" in (quick_report / "report.md").read_text()


def test_no_interval_under_three_clips_and_plots_stay_in_the_metrics_range():
    from metis_rt.eval.report import error_bar

    assert math.isnan(mean_ci([1.5, 4.9])[1])  # two clips: t(0.975, 1) would stretch it to -7.5 .. 11
    mean, half, _ = mean_ci([1.2, 4.9, 4.8])
    below, above = error_bar("dnsmos_ovrl", mean, half)
    assert mean - below >= 1.0 and mean + above <= 5.0 and below > 0 and above > 0
    assert error_bar("si_sdr", 3.0, 2.0) == (2.0, 2.0)  # unbounded metric: the interval as computed
    assert error_bar("pesq", 2.0, math.nan) == (0.0, 0.0)


def test_spectrogram_title_is_readable():
    from metis_rt.eval.report import describe_condition

    condition = {"snr_db": 5.0, "reverb": True, "rt60_s": 0.62, "drr_db": None, "noise": "babble", "sir_db": None}
    assert describe_condition(condition) == "SNR 5 dB, babble noise, reverb (RT60 0.6 s)"
    assert describe_condition({"snr_db": None, "reverb": False}) == "clean"
    title = describe_condition({"interferer": "speaker f03", "interferer_language": "de", "sir_db": 0.0})
    assert title == "speaker f03, de at SIR 0 dB" and "{" not in title
