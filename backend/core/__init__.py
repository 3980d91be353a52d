"""What every core loop shares: the hooks it reports through and the checkpoint format it saves in."""
