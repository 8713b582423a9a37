"""Cut blocks out of a checkpoint: drop their weights and renumber the remaining blocks.

The command lives in slim/apps/prune_layers.py (its usage: `python tools/prune_layers.py --help`); installed, it is also
`slim-prune-layers`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.prune_layers import cli, main  # noqa: E402,F401  (`slim-prune-layers` when installed)

if __name__ == "__main__":
    cli()
