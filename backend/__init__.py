"""Rebalance: repair class imbalance in image datasets with synthetic images."""

__version__ = "0.1.0"
