"""`edgefl experiment NAME`: the federated-learning experiments on MNIST, as tables, PNG plots and JSON.

``lab`` runs one setting (devices, partition, aggregator, attack, privacy,
extractor) through the in-process rounds of ``edgefl.fl.simulation`` — the
trainer, aggregators, attacks and reputation fold the networked round uses —
and measures accuracy, loss, backdoor success and reputation per round;
``plans`` names the experiments, their grids, tables, plots and goals;
``cli`` registers the command.
"""
