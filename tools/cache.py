"""Check a teacher-output cache and mark damaged entries for refilling (`verify DIR [--repair]`).

The command lives in slim/apps/cache.py (its usage: `python tools/cache.py --help`); installed, it is also
`slim-cache`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.cache import cli, main  # noqa: E402,F401  (`slim-cache` when installed)

if __name__ == "__main__":
    cli()
