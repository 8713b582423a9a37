"""Export a trained model for inference (`paddle.jit.save`) and check it against the dygraph model.

The command lives in slim/apps/export.py (its usage: `python tools/export.py --help`); installed, it is also
`slim-export`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.export import cli, main  # noqa: E402,F401  (`slim-export` when installed)

if __name__ == "__main__":
    cli()
