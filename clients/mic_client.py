"""Live microphone client: microphone -> metis-rt server -> speakers. See metis_rt/clients/mic.py.

python clients/mic_client.py --list-devices
python clients/mic_client.py --server ws://127.0.0.1:8765 --task se --input USB --output "Virtual Cable"
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis_rt.clients.mic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
