"""Conferencing bridge: microphone -> metis-rt -> virtual microphone. See metis_rt/bridge/app.py.

python clients/bridge.py --server ws://127.0.0.1:8765 --task se      # Linux: creates "Metis Virtual Microphone"
python clients/bridge.py --local --model-dir DIR --mqtt mqtt://127.0.0.1
python clients/bridge.py --output-device "BlackHole 2ch"              # macOS / Windows: a loopback driver
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis_rt.bridge.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
