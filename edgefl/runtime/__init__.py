"""Event loop, supervisor, configuration and firmware profiles, logging, metrics."""
