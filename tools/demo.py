"""Each task's distillation demo, end to end, with the package's own commands (`make demo`, `make demo-det`, ...).

    python tools/demo.py seg [--out output/demo] [--seed 0] [--quick]           (slim/apps/experiments/seg.py)
    python tools/demo.py cls [--out output/demo-cls] [--seed 0] [--quick]       (slim/apps/experiments/cls.py)
    python tools/demo.py depth [--out output/demo-depth] [--seed 0] [--quick]   (slim/apps/experiments/depth.py)
    python tools/demo.py det [--out output/demo-det] [--seed 0] [--quick] [--data nuclei|trees]
                                                                                (slim/apps/experiments/det.py)

Every step is the command a user would type; each is printed before it runs, its progress lines are
shown as they come, and the table of results is printed and written to --out.
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
