"""Weights & Biases: the tracker, the runs it logs and the W&B Report."""
