"""``python -m tinycats`` is the ``tinycats`` command."""

from tinycats.program import main

main()
