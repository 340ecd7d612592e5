"""Federated learning: the round, aggregators and attack behaviours chosen by name, data partitions."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "aggregate": ["AGGREGATORS", "Aggregator", "AggregationError", "Update", "make", "parse_options"],
    "attacks": ["ATTACKS", "Attack", "AttackError", "choose_attackers", "poison_aggregate"],
    "protocol": ["Task", "TaskView", "GlobalModel", "FogUpdate", "Aggregation", "AggregatorSpec", "ProtocolError"],
    "round": ["Contribution", "record_aggregation", "check_aggregation", "check_warm_start", "train_device"],
    "reputation": ["fold", "fold_chain", "payout", "Offence"],
    "selection": ["select", "Selection"],
    "partition": ["PartitionError", "PARTITIONERS", "Partitioner", "IID", "Dirichlet", "Shards"],
    "simulation": ["run_rounds", "SimDevice"],
})
