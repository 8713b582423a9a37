"""Each task's distillation demo, end to end, with the package's own commands (`make demo`, `make demo-det`, ...).

The command lives in slim/apps/demo.py (its usage: `python tools/demo.py --help`); installed, it is also
`slim-demo`.
"""
import os
import sys

try:  # installed (make install, pip install -e .): nothing to add
    import slim  # noqa: F401
except ImportError:  # run from a checkout that was not installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slim.apps.demo import cli, main  # noqa: E402,F401  (`slim-demo` when installed)

if __name__ == "__main__":
    cli()
