"""Does progressive layer removal beat training the shallow model alone or distilling into it directly?

    python bench/depth_gain.py [--seeds 2] [--budgets 25 100] [--out output/bench/depth_gain] [--latency_runs 25]

Nuclei segmentation. The 14-block teacher (configs/depth/segformer_mscan_d14_nuclei.yml) is trained once;
then, for each seed and each budget of student iterations, four 7-block students trained for that budget
(slim/apps/experiments/depth.py): alone, KD from scratch (direct distillation), the teacher cut at once and
fine-tuned, and the pipeline configs/depth/nuclei_progressive.yml (progressive removal, cut, fine-tune).
Prints mIoU (mean, std and range over seeds; weights of the last iteration), parameters, training time
and inference latency (median of --latency_runs forwards of one 1x3x256x256 input, all models in this
process, taking turns).
"""
import argparse
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.apps import commands  # noqa: E402
from slim.apps.experiments import depth as experiment  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2, help="student seeds 0..N-1 (the teacher uses seed 0)")
    p.add_argument("--out", default="output/bench/depth_gain")
    p.add_argument("--budgets", type=int, nargs="+", default=[25, 100], help="student iterations (each run)")
    p.add_argument("--latency_runs", type=int, default=25)
    p.add_argument("--quick", action="store_true", help="a few iterations each (checks the commands only)")
    p.add_argument("--quiet", action="store_true", help="do not stream the commands' progress")
    args = p.parse_args()
    if args.latency_runs < 20:
        p.error("--latency_runs must be at least 20")
    out = os.path.abspath(args.out)
    for stale in ["teacher"] + [f"seed{seed}" for seed in range(args.seeds)]:
        if os.path.isdir(os.path.join(out, stale)):
            shutil.rmtree(os.path.join(out, stale))  # the bench's own folders: every run starts afresh
    budgets = [4] if args.quick else args.budgets
    result = experiment.experiment(out, list(range(args.seeds)), budgets, quick=args.quick, echo=not args.quiet,
                                   latency_runs=args.latency_runs)
    text = experiment.write(result, out)
    print("\n" + text + f"\n\ntotal {result['total_s']:.0f} s; wrote {os.path.join(out, 'results.md')}", flush=True)


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
