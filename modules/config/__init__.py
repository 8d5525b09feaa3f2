"""Configuration: the preset model (every key, its checks, one validator for the app, CLI and trainer) and durations."""
