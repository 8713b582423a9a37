"""Detect objects in images and draw them: boxes, class names and scores (PaddleDetection's infer.py).

The command lives in slim/apps/infer.py (its usage: `python tools/infer.py --help`); installed, it is also
`slim-infer`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.infer import cli, main  # noqa: E402,F401  (`slim-infer` when installed)

if __name__ == "__main__":
    cli()
