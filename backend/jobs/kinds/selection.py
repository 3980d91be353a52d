"""Job kinds for selection (filled in by its issue)."""
