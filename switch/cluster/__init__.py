"""A cluster of switch workers: the layout (shards, ports, journals), the worker
supervisor behind ``payswitch serve --workers N``, and the files the existing engines
read: HAProxy's config and Prometheus's file-based service discovery (docs/cluster.md)."""
