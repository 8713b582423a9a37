"""Run a trained model on images and write visualisations.

The command lives in slim/apps/predict.py (its usage: `python tools/predict.py --help`); installed, it is also
`slim-predict`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.predict import cli, main  # noqa: E402,F401  (`slim-predict` when installed)

if __name__ == "__main__":
    cli()
