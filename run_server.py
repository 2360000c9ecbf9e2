"""Real-time server entry point (thin). The WebSocket server is not built yet: it arrives with the server issue.

Until then this script says so and exits with status 2 instead of pretending to serve.
"""

import sys

if __name__ == "__main__":
    print(
        "run_server.py: the streaming server is not implemented yet; use `metis-rt process` for offline files.",
        file=sys.stderr,
    )
    sys.exit(2)
