"""Training: data built here (``data.py``), one training loop (``loop.py``), adapter fine-tuning and from-scratch
pre-training of every Metis component (``finetune.py``, ``pretrain/``), exports in the official file layout."""
