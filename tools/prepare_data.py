"""Prepare a dataset from the sample data of an installed pip package (no network needed).

The command lives in slim/apps/prepare_data.py (its usage: `python tools/prepare_data.py --help`); installed, it is also
`slim-prepare-data`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.prepare_data import cli, main  # noqa: E402,F401  (`slim-prepare-data` when installed)

if __name__ == "__main__":
    cli()
