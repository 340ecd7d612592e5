"""Event loop, supervisor, configuration and firmware profiles, logging, metrics, retries with backoff."""

from edgefl._faces import faces

__all__, __getattr__, __dir__ = faces(__name__, {
    "backoff": ["Backoff", "retry"],
    "config": ["Config", "ConfigError", "MqttSection", "load_config"],
    "files": ["write_atomic"],
    "lock": ["DataDirLock", "DataDirLocked"],
    "logging": ["RateLimited", "setup_logging"],
    "loop": ["Supervisor", "run"],
    "metrics": ["METRICS", "Metrics"],
    "state": ["StateError", "StateFile"],
})
