"""Quality evaluation: metrics (metrics.py) and the baseline systems users would otherwise pick (baselines.py).

Importing the package is light (numpy only); the evaluation packages of the ``[eval]`` extra are imported inside the
functions that need them.
"""
