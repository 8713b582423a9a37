"""Print every named sublayer of a config's model with its class, output shape(s) and parameters.

The command lives in slim/apps/list_layers.py (its usage: `python tools/list_layers.py --help`); installed, it is also
`slim-list-layers`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.list_layers import cli, main  # noqa: E402,F401  (`slim-list-layers` when installed)

if __name__ == "__main__":
    cli()
