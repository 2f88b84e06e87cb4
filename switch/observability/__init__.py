"""Metrics and logs: every Prometheus metric (children bound once) and JSON log lines."""
