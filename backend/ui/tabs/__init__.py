"""One module per studio tab; each has ``build(ctx)`` that lays out its controls and wires its events."""
