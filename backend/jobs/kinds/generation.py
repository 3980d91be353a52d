"""Job kinds for generation (filled in by its issue)."""
