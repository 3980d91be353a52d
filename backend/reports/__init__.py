"""Tables, plotly figures, CSV/JSON exports and the self-contained report.html built from benchmark rows.

A *row* is one training run (one variant, one seed), a plain dict::

    {"variant": "sd_al", "seed": 0, "overall_acc": 90.8, "per_class": {"cat": 51.4, ...},   # percent
     "val_acc": 91.0, "epochs": 100, "best_epoch": 97, "select_epoch": "best_balanced", "n_synthetic": 4950,
     "validation": {"size": 5000, "counts": {"cat": 5, ...}, "fingerprint": "3f2a..."},  # the seed's split
     "history": [{"epoch": 1, "train_loss": ..., "val_acc": ..., "lr": ...}, ...],
     "confusion": [[...], ...]}

Only ``variant``, ``seed``, ``overall_acc`` and ``per_class`` are required; figures skip what is missing.
"""
