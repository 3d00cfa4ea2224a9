"""``python -m embedcyto`` runs the command line (also ``torchrun -m embedcyto extract ...``)."""

from embedcyto.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="embedcyto")
