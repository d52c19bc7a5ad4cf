"""``python -m bulkclaim`` is the same as the ``bulkclaim`` command."""

from bulkclaim.cli import main

main()
