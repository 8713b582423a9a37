"""Post-training quantisation: an int8 inference model from fp32 weights and a few calibration batches.

The command lives in slim/apps/ptq.py (its usage: `python tools/ptq.py --help`); installed, it is also
`slim-ptq`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.ptq import cli, main  # noqa: E402,F401  (`slim-ptq` when installed)

if __name__ == "__main__":
    cli()
