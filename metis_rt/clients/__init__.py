"""Clients of the metis-rt server: a live microphone client (``mic``) and a file streamer (``file``).

``wire`` holds the client side of the protocol, ``jitter`` the playback buffer, ``devices`` the sounddevice
(PortAudio) glue, imported lazily, and ``terminal`` the status line and key presses.
"""
