"""The ``payswitch`` command line: the composition root of every tool.

``main`` parses arguments and imports each subcommand's machinery only when that
subcommand runs, so ``payswitch fault --help`` never pays for numba or the harness.
"""
