"""``python -m simmpnet`` runs the command line."""
import sys

from .cli import main

# The guard: worker processes started with "spawn" (nnU-Net's pools) import this module again.
if __name__ == "__main__":
    sys.exit(main())
