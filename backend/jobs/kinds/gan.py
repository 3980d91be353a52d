"""Job kinds for gan (filled in by its issue)."""
