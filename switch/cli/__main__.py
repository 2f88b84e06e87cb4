"""``python -m switch.cli``: the same as the ``payswitch`` command."""

from switch.cli.main import main

main()
