"""The load-test harness: client, open-loop generator, workloads, runs, reports, scenarios, demo.

It drives the switch from outside, over its wire protocol; nothing in ``switch`` imports it
except the command line (``switch.cli``).
"""
