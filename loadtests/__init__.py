"""Load tests: the harness package and the Locust files (Locust runs in its own processes)."""
