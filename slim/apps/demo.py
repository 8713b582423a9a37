"""Each task's distillation demo, end to end, with the package's own commands (`make demo`, `make demo-det`, ...).

    python tools/demo.py seg [--out output/demo] [--seed 0] [--quick]           (slim/apps/experiments/seg.py)
    python tools/demo.py cls [--out output/demo-cls] [--seed 0] [--quick]       (slim/apps/experiments/cls.py)
    python tools/demo.py cls --paddleclas [--out output/demo-ppcls] [--quick]   (slim/apps/experiments/ppcls.py)
    python tools/demo.py depth [--out output/demo-depth] [--seed 0] [--quick]   (slim/apps/experiments/depth.py)
    python tools/demo.py det [--out output/demo-det] [--seed 0] [--quick] [--data nuclei|trees]
                                                                                (slim/apps/experiments/det.py)

Every step is the command a user would type; each is printed before it runs, its progress lines are
shown as they come, and the table of results is printed and written to --out.
"""
import argparse
import importlib
import os
import sys


from slim.apps import commands
from slim.apps.commands import ROOT
from slim.apps.experiments.det import DATASETS as DET_DATASETS

# task -> (module with `demo(args, out)`, default output folder)
DEMOS = {
    # segmentation (nuclei): teacher, student alone, distilled student; table and loss curves
    "seg": ("slim.apps.experiments.seg", "output/demo"),
    # classification: teacher, student alone, KD, KD + frozen shared head
    "cls": ("slim.apps.experiments.cls", "output/demo-cls"),
    # depth distillation (nuclei): 14-block teacher, 7-block students alone / KD / cut at once / progressive
    "depth": ("slim.apps.experiments.depth", "output/demo-depth"),
    # detection (PaddleDetection's YOLOv3 distillation workflow; nuclei boxes or tree crowns): teacher, student
    # alone, distilled
    "det": ("slim.apps.experiments.det", "output/demo-det"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=sorted(DEMOS))
    p.add_argument("--out", default=None, help="output folder (default: the task's, e.g. output/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few iterations of each step (checks the pipeline)")
    p.add_argument("--data", default=None, choices=sorted(DET_DATASETS), help="det only: the dataset (default nuclei)")
    p.add_argument("--paddleclas", action="store_true", help="cls only: PaddleClas's quick-start distillation with "
                   "its config shape (configs/ppcls/; slim/apps/experiments/ppcls.py)")
    args = p.parse_args()
    module, default_out = DEMOS[args.task]
    if args.paddleclas:
        if args.task != "cls":
            p.error("--paddleclas goes with the cls demo: tools/demo.py cls --paddleclas")
        module, default_out = "slim.apps.experiments.ppcls", "output/demo-ppcls"
    return importlib.import_module(module).demo(args, os.path.abspath(args.out or os.path.join(ROOT, default_out)))


def cli():
    """The `slim-demo` command."""
    sys.exit(commands.main_guard(main))


if __name__ == "__main__":
    cli()
