"""metis-rt: real-time streaming speech processing on the Metis masked generative speech models."""

__version__ = "0.1.0"
