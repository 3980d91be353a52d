"""Classifiers, the trainer and the metrics a benchmark reports (core code: no web or database imports)."""
