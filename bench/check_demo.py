"""How long `--check` takes on the demo pairs, and what it reports, with their trained teachers.

    python bench/check_demo.py --seg_teacher output/check_demo/seg_teacher/best_model/model.pdparams \
        --cls_teacher output/check_demo/cls_teacher/best_model/model.pdparams \
        --ppcls_teacher output/check_demo/ppcls/ResNet18/best_model [--repeats 3] [--out output/bench/check]

Pairs (each run is the command a user types, `--check` added, in a subprocess with OMP_NUM_THREADS=2):
- seg: configs/seg/demo/teacher.yml -> student.yml (LR-ASPP MobileNetV3-large -> small x0.35, nuclei; `make demo`)
- cls: configs/cls/convnet_teacher_mnist.yml -> convnet_student_mnist.yml (KD) and
  convnet_student_mnist_head_fixed.yml (KD + the teacher's frozen classifier; `make demo-cls`), on data/mnist
- cls, untrained teacher: the same KD pair with --allow_untrained_teacher (what a forgotten weights file looks like)
- ppcls: configs/ppcls/R50_vd_distill_MV3_large_x1_0_mnist.yaml with `tools/demo.py cls --paddleclas`'s overrides
  (ResNet18 teacher -> MobileNetV3_large_x1_0 on data/mnist_per_class100, 10 epochs), through tools/train.py -c

Train the teachers first with the demos' commands (`tools/train.py --config configs/seg/demo/teacher.yml ...`,
`tools/train.py --config configs/cls/convnet_teacher_mnist.yml ...`). Prints a markdown table: the exit status, the
flagged findings, the check's own time (the `check took` line) and the command's wall time (median of --repeats
runs; the machine's load adds to both: the table gives the 1-minute load average at the start).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
from slim.apps import commands  # noqa: E402


def pairs(args):
    seg = ["slim/distill/distill_train.py", "--teacher_config", "configs/seg/demo/teacher.yml", "--student_config", "configs/seg/demo/student.yml"]
    cls = ["slim/distill/distill_train.py", "--teacher_config", "configs/cls/convnet_teacher_mnist.yml"]
    out = []
    if args.seg_teacher:
        out.append(("seg demo (LR-ASPP MBv3-large -> small x0.35)", seg + ["--teacher_pretrained", args.seg_teacher]))
    if args.cls_teacher:
        out.append(("cls demo, KD", cls + ["--student_config", "configs/cls/convnet_student_mnist.yml",
                                          "--teacher_pretrained", args.cls_teacher]))
        out.append(("cls demo, KD + frozen head", cls + ["--student_config",
                                                         "configs/cls/convnet_student_mnist_head_fixed.yml",
                                                         "--teacher_pretrained", args.cls_teacher]))
    out.append(("cls demo, KD, untrained teacher", cls + ["--student_config", "configs/cls/convnet_student_mnist.yml",
                                                         "--allow_untrained_teacher"]))
    if args.ppcls_teacher:
        from slim.apps.experiments.ppcls import DISTILL, data_opts
        out.append(("ppcls demo (ResNet18 -> MobileNetV3_large_x1_0)",
                    ["tools/train.py", "-c", DISTILL, "-o", *data_opts("data/mnist_per_class100"),
                     "Arch.models.0.Teacher.name=ResNet18", f"Arch.models.0.Teacher.pretrained={args.ppcls_teacher}",
                     "Global.epochs=10"]))
    return out


def run(cmd, save_dir):
    if os.path.isdir(save_dir):
        shutil.rmtree(save_dir)
    start = time.perf_counter()
    proc = subprocess.run(cmd + ["--save_dir", save_dir], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    wall = time.perf_counter() - start
    report_path = os.path.join(save_dir, "check.json")
    if not os.path.isfile(report_path):
        raise SystemExit(f"no check.json from {' '.join(cmd)}:\n{proc.stderr[-2000:]}")
    with open(report_path) as f:
        report = json.load(f)
    return proc.returncode, wall, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seg_teacher", default=None, help="the trained seg demo teacher's weights")
    p.add_argument("--cls_teacher", default=None, help="the trained cls demo teacher's weights")
    p.add_argument("--ppcls_teacher", default=None, help="the ppcls demo's trained ResNet18 (its best_model folder)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="output/bench/check")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for name, flags in pairs(args):
        codes, walls, checks, findings = [], [], [], []
        for r in range(args.repeats):
            code, wall, report = run([PY, *flags, "--seed", "0", "--check"],
                                     os.path.join(args.out, f"{len(rows)}_{r}"))
            codes.append(code)
            walls.append(wall)
            checks.append(report["check_seconds"])
            findings = [f"{f['section']}: {f['message'][:90]}" for f in report["findings"] if f["flagged"]]
        rows.append((name, sorted(set(codes)), findings, statistics.median(checks), statistics.median(walls)))
    lines = [f"`python bench/check_demo.py --repeats {args.repeats}`; 1-minute load average at the start: {load:.1f} "
             f"(2 cores)", "", "| pair | exit | flagged | check (s) | command wall (s) |", "| --- | --- | --- | --- | --- |"]
    for name, codes, findings, check, wall in rows:
        lines.append(f"| {name} | {', '.join(map(str, codes))} | {'; '.join(findings) or 'nothing'} | {check:.1f} | "
                     f"{wall:.1f} |")
    commands.save_results(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
