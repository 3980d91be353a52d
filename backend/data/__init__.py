"""Datasets: sources, decoded cache, imbalance, variants, batched transforms, safe extraction, export."""
