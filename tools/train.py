"""Train one model alone with the shared trainer (the tutorial's teacher and student-baseline steps).

The command lives in slim/apps/train.py (its usage: `python tools/train.py --help`); installed, it is also
`slim-train`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.train import cli, main  # noqa: E402,F401  (`slim-train` when installed)

if __name__ == "__main__":
    cli()
