"""Federated learning: aggregators and data partitions (more strategies plug in by name)."""
