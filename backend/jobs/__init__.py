"""Jobs: the registry of kinds, the queue (claim, lease, finish) and the worker loop."""
