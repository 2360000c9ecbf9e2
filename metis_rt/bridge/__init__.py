"""Virtual audio devices that let conferencing apps hear the bridge's processed audio."""

from metis_rt.bridge.virtual_mic import VirtualMic, VirtualMicError, cleanup_stale, install_signal_handlers

__all__ = ["VirtualMic", "VirtualMicError", "cleanup_stale", "install_signal_handlers"]
