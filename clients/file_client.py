"""Stream an audio file through a metis-rt server and save the output. See metis_rt/clients/file.py.

python clients/file_client.py examples/speech_noisy.wav -o out.wav --server ws://127.0.0.1:8765 --realtime
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metis_rt.clients.file import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
