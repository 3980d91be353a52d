"""Job kinds for benchmark (filled in by its issue)."""
