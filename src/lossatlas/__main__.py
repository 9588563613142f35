"""``python -m lossatlas`` runs the CLI."""

from lossatlas.cli import main

main()
