"""Job kinds for datasets (filled in by its issue)."""
