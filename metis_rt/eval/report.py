"""The evaluation report folder: ``report.md`` (summary tables), ``clips.csv`` (one row per clip and system) and PNG
plots (spectrograms before/after, quality vs SNR, quality vs algorithmic latency). Tables give the mean with a 95 %
confidence interval of the mean (Student t; from 3 clips on: under that only the mean) and the count of clips where
the metric was defined. Plots clamp an interval to the values its metric can take (e.g. DNSMOS 1-5).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from metis_rt.eval.metrics import METRICS

SPECTROGRAM_CLIPS = {"se": 3, "tse": 1, "vc": 1}
LATENCY_METRICS = ("dnsmos_ovrl", "pesq", "si_sdr")
SNR_METRICS = ("dnsmos_ovrl", "pesq", "si_sdr", "stoi")
CONDITION_COLUMNS = ("snr_db", "reverb", "noise", "sir_db", "language")
MIN_CI_CLIPS = 3  # fewer clips give no interval: with 2, t(0.975, 1) = 12.7 times the spread says nothing


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95 % CI, n) over the finite values; NaN mean when none, NaN half-width under
    MIN_CI_CLIPS values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) < MIN_CI_CLIPS:
        return float(v.mean()), math.nan, len(v)
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean()), half, len(v)


def error_bar(metric: str, mean: float, half: float) -> tuple[float, float]:
    """(below, above) the mean for a plot: the CI clamped to the values the metric can take; (0, 0) for none."""
    if not math.isfinite(half):
        return 0.0, 0.0
    low, high = METRICS[metric].bounds
    lo = mean - half if low is None else max(mean - half, low)
    hi = mean + half if high is None else min(mean + half, high)
    return max(mean - lo, 0.0), max(hi - mean, 0.0)


def describe_condition(condition: dict) -> str:
    """A spectrogram title's condition, e.g. "SNR 5 dB, babble noise, reverb (RT60 0.6 s)"; unset keys left out."""
    c = {k: v for k, v in condition.items() if v is not None and v is not False and v != ""}  # 0 dB is a value
    parts = []
    if "snr_db" in c:
        parts.append(f"SNR {c['snr_db']:g} dB")
    if "noise" in c:
        parts.append(f"{c['noise']} noise" + (f" ({c['noise_detail']})" if "noise_detail" in c else ""))
    if c.get("reverb"):
        details = [
            f"RT60 {c['rt60_s']:.1f} s" if "rt60_s" in c else "",
            f"DRR {c['drr_db']:g} dB" if "drr_db" in c else "",
        ]
        details = [d for d in details if d]
        parts.append("reverb" + (f" ({', '.join(details)})" if details else ""))
    if "interferer" in c or "sir_db" in c:
        who = c.get("interferer", "interfering speaker")
        lang = f", {c['interferer_language']}" if "interferer_language" in c else ""
        parts.append(f"{who}{lang}" + (f" at SIR {c['sir_db']:g} dB" if "sir_db" in c else ""))
    if "reference_speaker" in c:
        lang = f" ({c['reference_language']})" if "reference_language" in c else ""
        parts.append(f"target voice {c['reference_speaker']}{lang}")
    return ", ".join(parts) or "clean"


def _cell(values: Sequence[float]) -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "–"
    return f"{mean:.2f} ± {half:.2f} ({n})" if math.isfinite(half) else f"{mean:.2f} ({n})"


def _systems(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["system"] for r in rows))


def write_csv(path: Path, rows: list[dict], which: Sequence[str]) -> None:
    columns = ["item", "task", "system", "split", *CONDITION_COLUMNS, *which]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["task"], r["item"], r["system"])):
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def summary_table(rows: list[dict], task: str, which: Sequence[str], latency: dict) -> list[str]:
    task_rows = [r for r in rows if r["task"] == task]
    shown = [m for m in which if any(math.isfinite(r.get(m, math.nan)) for r in task_rows)]
    arrows = ["↑" if METRICS[m].higher_is_better else "↓" for m in shown]
    head = ["system", "latency ms"] + [f"{METRICS[m].label} {a}" for m, a in zip(shown, arrows, strict=True)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system in _systems(task_rows):
        sel = [r for r in task_rows if r["system"] == system]
        lat = latency.get(system)
        cells = [system, "offline" if lat is None else f"{lat:.0f}"] + [_cell([r.get(m) for r in sel]) for m in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def snr_table(rows: list[dict], metric: str) -> list[str]:
    se = [r for r in rows if r["task"] == "se" and r.get("snr_db") is not None]
    snrs = sorted({r["snr_db"] for r in se})
    if not snrs:
        return []
    lines = ["| system | " + " | ".join(f"{s:g} dB" for s in snrs) + " |", "|" + "---|" * (len(snrs) + 1)]
    for system in _systems(se):
        cells = [_cell([r.get(metric) for r in se if r["system"] == system and r["snr_db"] == s]) for s in snrs]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality_vs_snr(path: Path, rows: list[dict]) -> bool:
    se = [r for r in rows if r["task"] == "se" and r.get("snr_db") is not None]
    if not se:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    snrs = sorted({r["snr_db"] for r in se})
    for ax, metric in zip(axes.flat, SNR_METRICS, strict=True):
        for system in _systems(se):
            stats = [mean_ci([r.get(metric) for r in se if r["system"] == system and r["snr_db"] == s]) for s in snrs]
            means = [m for m, _, _ in stats]
            errs = np.array([error_bar(metric, m, h) for m, h, _ in stats]).T.reshape(2, -1)
            ax.errorbar(snrs, means, yerr=errs, marker="o", capsize=3, label=system)
        info = METRICS[metric]
        ax.set_xlabel("input SNR (dB)")
        ax.set_ylabel(f"{info.label}" + (f" ({info.unit})" if info.unit else ""))
        ax.set_title(f"{info.label} vs input SNR (SE; mean, 95% CI if ≥ {MIN_CI_CLIPS} clips)", fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_quality_vs_latency(path: Path, rows: list[dict], latency: dict) -> bool:
    se = [r for r in rows if r["task"] == "se"]
    if not se:
        return False
    plt = _pyplot()
    finite = [v for v in latency.values() if v is not None]
    offline_x = (max(finite) if finite else 0.0) * 1.25 + 100.0  # offline systems drawn right of every streaming one
    fig, axes = plt.subplots(1, len(LATENCY_METRICS), figsize=(15, 4.8), constrained_layout=True)
    for ax, metric in zip(axes, LATENCY_METRICS, strict=True):
        for system in _systems(se):
            mean, half, n = mean_ci([r.get(metric) for r in se if r["system"] == system])
            if n == 0:
                continue
            x = latency.get(system)
            x = offline_x if x is None else x
            below, above = error_bar(metric, mean, half)
            ax.errorbar([x], [mean], yerr=[[below], [above]], marker="o", capsize=3, linestyle="none", label=system)
        ax.axvline(offline_x, color="grey", alpha=0.3, linestyle="--")
        ax.text(offline_x, ax.get_ylim()[0], " offline", color="grey", fontsize=8, va="bottom")
        info = METRICS[metric]
        ax.set_xlabel("algorithmic latency (ms)")
        ax.set_ylabel(info.label + (f" ({info.unit})" if info.unit else ""))
        ax.set_title(f"{info.label} vs latency (SE; mean, 95% CI if ≥ {MIN_CI_CLIPS} clips)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_spectrograms(path: Path, item: dict, root: Path, outputs: dict[str, Path]) -> None:
    plt = _pyplot()
    panels = [("input", root / item["input"])]
    if item.get("clean"):
        panels.append(("clean reference", root / item["clean"]))
    panels += sorted(outputs.items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.9 * len(panels)), sharex=True, constrained_layout=True)
    for ax, (label, wav_path) in zip(np.atleast_1d(axes), panels, strict=True):
        x, rate = sf.read(wav_path, dtype="float32")
        x = x if x.ndim == 1 else x.mean(axis=1)
        with np.errstate(divide="ignore"):  # digital silence: log of 0 is drawn as the floor colour
            ax.specgram(x, NFFT=512, Fs=rate, noverlap=384, cmap="magma", vmin=-120, vmax=-20)
        ax.set_ylabel("Hz")
        ax.set_title(label, fontsize=9, loc="left")
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(
        f"{item['id']} ({item['task'].upper()}): {describe_condition(item.get('condition') or {})}", fontsize=9
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- the report
def write_report(
    out_dir: Path, rows: list[dict], info: dict, items: list[dict], root: Path, which: Sequence[str]
) -> Path:
    write_csv(out_dir / "clips.csv", rows, which)
    latency = info["latency_ms"]
    plots = []
    if plot_quality_vs_snr(out_dir / "quality_vs_snr.png", rows):
        plots.append(("Quality vs input SNR", "quality_vs_snr.png"))
    if plot_quality_vs_latency(out_dir / "quality_vs_latency.png", rows, latency):
        plots.append(("Quality vs algorithmic latency", "quality_vs_latency.png"))
    for task, count in SPECTROGRAM_CLIPS.items():
        for item in [i for i in items if i["task"] == task][:count]:
            outputs = {
                r["system"]: out_dir / "audio" / r["system"] / f"{item['id']}.wav"
                for r in rows
                if r["item"] == item["id"]
            }
            name = f"spectrogram_{item['id']}.png"
            plot_spectrograms(out_dir / name, item, root, outputs)
            plots.append((f"Spectrograms: {item['id']}", name))

    lines = ["# metis-rt evaluation report", ""]
    official = info.get("official_architecture")
    if info.get("model_dir") and official is False:
        lines += [
            f"> **The metis-* numbers come from `{info['model_dir']}`, whose architecture is not the official Metis "
            "one: not the released weights (a test model with random weights, or a small model trained here). They "
            "say nothing about Metis quality; they measure that model only.**",
            "",
        ]
    elif info.get("model_dir"):
        lines += [
            f"> metis-* systems: `{info['model_dir']}` (official architecture; the weights are whatever the folder "
            "holds — the official checkpoints after `metis-rt download`).",
            "",
        ]
    lines += [
        f"- set: `{info['set']}` (seed {info['seed']}), {info['items']} item(s)"
        + (" — quick subset" if info["quick"] else "")
        + (f" — at most {info['per_task']} per task (fixed seeded sample)" if info.get("per_task") else ""),
        f"- wall time: {info['wall_s']} s; mean processing time per clip: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in info["seconds_per_clip"].items()),
        f"- cells: mean ± 95 % CI of the mean (clips where defined; no interval under {MIN_CI_CLIPS} clips); "
        "↑ higher is better, ↓ lower is better",
        "- WER is relative to pocketsphinx's transcript of the clean reference (VC: of the source): a rough trend",
        "- speaker similarity: to the clean target (SE, TSE) or to the target voice (VC)",
        "",
    ]
    for task in ("se", "tse", "vc"):
        if any(r["task"] == task for r in rows):
            lines += [f"## {task.upper()}", "", *summary_table(rows, task, which, latency), ""]
    for metric in ("dnsmos_ovrl", "pesq", "si_sdr"):
        table = snr_table(rows, metric)
        if table and metric in which:
            lines += [f"### SE: {METRICS[metric].label} by input SNR", "", *table, ""]
    lines += ["## Plots", ""]
    lines += [f"### {title}\n\n![{title}]({name})\n" for title, name in plots]
    if info.get("sources"):
        lines += ["## Sources", "", "| source | package | licence |", "|---|---|---|"]
        for s in info["sources"]:
            lines.append(f"| {s.get('name', '')} | {s.get('package', '')} | {s.get('licence', '')} |")
        lines.append("")
    lines += ["Per-clip numbers: [clips.csv](clips.csv).", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report
