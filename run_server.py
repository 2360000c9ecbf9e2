"""Start the metis-rt real-time server (same as `metis-rt serve`). See README.md and docs/protocol.md."""

import sys

from metis_rt.server.main import main

if __name__ == "__main__":
    sys.exit(main())
