"""Evaluate a model (teacher or student) on the validation set of its config.

The command lives in slim/apps/evaluate.py (its usage: `python tools/eval.py --help`); installed, it is also
`slim-eval`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.evaluate import cli, main  # noqa: E402,F401  (`slim-eval` when installed)

if __name__ == "__main__":
    cli()
