"""``python -m lightning_landscape.cli``: the ``lightning-landscape`` command."""

from lightning_landscape.cli.commands import main

if __name__ == "__main__":
    main()
