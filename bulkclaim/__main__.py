"""The ``bulkclaim`` command's entry point (also ``python -m bulkclaim``).

Signals are handled before anything else is imported: a Ctrl-C while the command is still starting
exits 130 like one at any later moment, not with a Python traceback.
"""

from bulkclaim.cli_signals import install_quit_handlers

install_quit_handlers()


def main() -> None:
    from bulkclaim.cli import main as run_command

    run_command()


if __name__ == "__main__":
    main()
