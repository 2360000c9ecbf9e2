"""How long a streaming resampler holds samples back: soxr presets vs our polyphase resampler.

For each rate pair and packet size, the worst shortfall (expected output so far - output produced) over a 2 s stream,
in ms. This is latency a live path pays on top of the model's. Also checks that the output does not depend on
packet sizes. Prints a markdown table.

  python bench/resampler_latency.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metis_rt.audio.stream_resampler import StreamResampler  # noqa: E402

PAIRS = [(48000, 16000), (44100, 16000), (24000, 16000), (16000, 24000), (48000, 24000), (8000, 16000)]
PACKETS_MS = (1, 10, 20, 100)


def worst_withheld_ms(make, rate_in: int, rate_out: int) -> tuple[float, bool]:
    x = np.random.default_rng(0).standard_normal(2 * rate_in).astype(np.float32)
    worst, outputs = 0.0, []
    for packet_ms in PACKETS_MS:
        push, flush = make()
        packet, produced, parts = max(1, rate_in * packet_ms // 1000), 0, []
        for i in range(0, len(x), packet):
            parts.append(push(x[i : i + packet]))
            produced += len(parts[-1])
            expected = min(i + packet, len(x)) * rate_out / rate_in
            worst = max(worst, (expected - produced) * 1000 / rate_out)
        outputs.append(np.concatenate([*parts, flush()]))
    invariant = all(len(o) == len(outputs[0]) and np.array_equal(o, outputs[0]) for o in outputs[1:])
    return worst, invariant


def soxr_maker(rate_in, rate_out, quality):
    def make():
        rs = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=quality)
        return (lambda x: rs.resample_chunk(x)), (lambda: rs.resample_chunk(np.zeros(0, np.float32), last=True))

    return make


def ours_maker(rate_in, rate_out):
    def make():
        r = StreamResampler(rate_in, rate_out)
        return r.push, r.flush

    return make


def main() -> None:
    print("| rates | soxr HQ | soxr MQ | soxr LQ | metis-rt polyphase |")
    print("|---|---|---|---|---|")
    for a, b in PAIRS:
        cells = []
        for make in (soxr_maker(a, b, "HQ"), soxr_maker(a, b, "MQ"), soxr_maker(a, b, "LQ"), ours_maker(a, b)):
            ms, invariant = worst_withheld_ms(make, a, b)
            cells.append(f"{ms:.1f} ms{'' if invariant else ' (packet-dependent!)'}")
        print(f"| {a} -> {b} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
