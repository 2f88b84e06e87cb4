"""The Grafana dashboards as code: ``python -m dashboards.generate`` writes
dashboards/grafana/*.json, which Grafana's provisioning reads. Edit the Python, not the JSON."""
