"""The bridge with a processor whose output is known exactly: ``GAIN`` times the (delayed) input.

``python -m tests.bridge_child --local [bridge options]``. Real Metis weights cannot run in real time on CI's CPU,
and random weights produce noise; with this processor a recording of the virtual microphone tells the processed
share of the output sample by sample: processed-only = GAIN, bypass = 1, mix m = m * GAIN + (1 - m).
"""

import sys

import numpy as np

from metis_rt.bridge.main import main
from metis_rt.streaming.processor import IdentityProcessor
from metis_rt.streaming.window import WindowResult

GAIN = 0.5


class ScaledDryProcessor(IdentityProcessor):
    def run(self, jobs):
        return [WindowResult(r.semantic, r.acoustic, (GAIN * r.wav_24k).astype(np.float32)) for r in super().run(jobs)]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], processor=ScaledDryProcessor()))
