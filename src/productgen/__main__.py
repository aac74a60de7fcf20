"""``python -m productgen`` (and ``torchrun -m productgen``) run the CLI."""

from productgen.cli import app

if __name__ == "__main__":
    app()
