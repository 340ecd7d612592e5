"""Per-operation CPU and latency benchmarks: `edgefl bench <name>`."""
