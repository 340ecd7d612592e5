"""Federated learning: the round, aggregators and attack behaviours chosen by name, data partitions."""
