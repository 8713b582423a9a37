"""What a teacher-output cache saves: the cost of a training step, and whether the result changes.

    python bench/teacher_cache.py [--reps 3] [--iters 12] [--seeds 3] [--skip_metrics] [--out DIR]

Step cost, for two pairs, each mode a separate run of the package's own command, the modes interleaved
within each repetition (alone, KD, KD filling the cache, KD from the cache), `--reps` repetitions:
  seg  DeepLabV3P ResNet50_vd -> ResNet18_vd (configs/seg/deeplabv3p_*; batch 4 of 128 px crops)
  cls  the MNIST ConvNet pair of the classification demo (configs/cls/convnet_*; batch 32)
  alone    tools/train.py on the student (CE only)
  KD       distill_train.py, the teacher runs every step
  fill     distill_train.py --teacher_cache on an empty folder: the teacher runs and its logits are written
  cached   distill_train.py --teacher_cache on the folder the fill run wrote: no teacher
The cost of a step is the trainer's own per-step time (`batch_cost` with --log_iters 1: reading the
batch, the step, and for fill/cached the cache), so start-up (imports, building models, opening the
cache) is not counted; the first 2 steps of each run are dropped, the median of the others taken, then the
median over repetitions (odd repetitions run the modes in another order, against drifts of the machine's
speed, which on a shared 2-core machine reach 15% between identical runs). Teachers here are untrained (--allow_untrained_teacher): a step costs the same.

Cost of the integrity checks (teacher_cache.py: every entry read is checked against its crc32): on each
pair's filled cache, reading the entries of one cached step with `lookup` and, apart, computing their checksums
over the same rows (median over all steps of an epoch, 20 passes), as a share of the cached step above.

Result, cached vs uncached KD, 3 seeds (`--seeds`), on the demo pairs with trained teachers: the seg demo
(LR-ASPP MobileNetV3-large -> small, best val mIoU as PaddleSeg reports it) and the cls demo (ConvNet,
top-1 of the last checkpoint). Students use --seed s and --data_seed 0: one cache, filled by the first
cached run, serves all seeds (the log's "N read, M computed" shows it).
"""
import argparse
import json
import os
import re
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from slim.apps import commands  # noqa: E402
from slim.apps.commands import PY  # noqa: E402

PAIRS = {
    "seg": {"teacher": "configs/seg/deeplabv3p_resnet50_vd_nuclei_teacher.yml",
            "student": "configs/seg/deeplabv3p_resnet18_vd_nuclei_student.yml", "opts": []},
    "cls": {"teacher": "configs/cls/convnet_teacher_mnist.yml", "student": "configs/cls/convnet_student_mnist.yml",
            "opts": []},
}
MODES = ("alone", "KD", "fill", "cached")
COST_RE = re.compile(r"\[TRAIN\].*?iter: (\d+)/\d+.*?batch_cost: ([0-9.]+)")
CACHE_RE = re.compile(r"teacher cache \S+: (\d+) sample\(s\) read, (\d+) computed")


def run(cmd, log):
    return commands.run(cmd, log, echo=False)


def step_costs(log_path, skip=2):
    with open(log_path) as f:
        costs = [float(m.group(2)) for m in COST_RE.finditer(f.read()) if int(m.group(1)) > skip]
    if not costs:
        raise RuntimeError(f"no [TRAIN] lines in {log_path}")
    return statistics.median(costs)


def cache_counts(log_path):
    with open(log_path) as f:
        found = CACHE_RE.findall(f.read())
    return tuple(int(x) for x in found[-1]) if found else None


def cost_runs(pair, cfg, out, reps, iters, data_opts):
    """{mode: [median step cost of each repetition]}."""
    costs = {m: [] for m in MODES}
    for rep in range(reps):
        base = os.path.join(out, pair, f"rep{rep}")
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        common = ["--iters", str(iters), "--log_iters", "1", "--save_interval", "100000", "--seed", "0"] + data_opts
        cache = os.path.join(base, "cache")
        distill = [PY, "slim/distill/distill_train.py", "-t", cfg["teacher"], "-c", cfg["student"],
                   "--allow_untrained_teacher"]
        cmds = {"alone": [PY, "tools/train.py", "-c", cfg["student"]],
                "KD": distill, "fill": distill + ["--teacher_cache", cache], "cached": distill + ["--teacher_cache", cache]}
        # the filling run comes before the cached one; otherwise odd repetitions reverse the order, so that a
        # drift of the machine's speed during a repetition does not favour one mode
        order = list(MODES) if rep % 2 == 0 else ["fill", "cached", "KD", "alone"]
        for mode in order:
            log = os.path.join(base, f"{mode}.log")
            run(cmds[mode] + ["--save_dir", os.path.join(base, mode)] + common, log)
            costs[mode].append(step_costs(log))
            if mode in ("fill", "cached"):
                read, computed = cache_counts(log)
                expect_read = mode == "cached"
                if (read > 0) != expect_read or (computed > 0) == expect_read:
                    raise RuntimeError(f"{log}: the {mode} run read {read} and computed {computed} samples")
        print(f"  {pair} rep {rep}: " + ", ".join(f"{m} {costs[m][-1]:.4f}s" for m in MODES), flush=True)
    return costs


def check_costs(all_costs, out, iters, passes=20):
    """{pair: (entries per step, lookup ms per step, checksum ms per step)} on each pair's rep0 cache."""
    import time

    import numpy as np

    from slim.engine.teacher_cache import TeacherCache, row_checksums
    found = {}
    for pair in all_costs:
        base = os.path.join(out, pair, "rep0")
        read, _ = cache_counts(os.path.join(base, "cached.log"))
        per_step = read // iters
        cache = TeacherCache.at(os.path.join(base, "cache"), log=lambda *_: None)
        ep = cache.open_epoch(0)
        rows = np.flatnonzero(np.asarray(ep.valid))
        batches = [rows[i:i + per_step] for i in range(0, len(rows) - per_step + 1, per_step)]
        files = list(cache.shard_specs())
        lookup, checks = [], []
        for _ in range(passes):
            for batch in batches:
                t0 = time.perf_counter()
                if cache.lookup([(0, int(i)) for i in batch], count=False) is None:
                    raise RuntimeError(f"{base}/cache: an entry of epoch 0 fails its checksum")
                t1 = time.perf_counter()
                row_checksums([np.asarray(ep.arrays[f][batch]) for f in files])
                t2 = time.perf_counter()
                lookup.append(t1 - t0)
                checks.append(t2 - t1)
        cache.close()
        found[pair] = (per_step, 1000 * statistics.median(lookup), 1000 * statistics.median(checks))
    return found


def print_check_costs(all_costs, found):
    print("\n| pair | entries per step | reading them from the cache (ms, checks included) | their checksums alone "
          "(ms) | cached step (s) | checksums / cached step |")
    print("|---|---|---|---|---|---|")
    for pair, (per_step, lookup_ms, check_ms) in found.items():
        step = statistics.median(all_costs[pair]["cached"])
        print(f"| {pair} | {per_step} | {lookup_ms:.3f} | {check_ms:.3f} | {step:.4f} | "
              f"{100 * check_ms / 1000 / step:.3f}% |")
    print("(median per step over every step of epoch 0, 20 passes)")


def fmt(value):
    return f"{value:.4f}"


def print_costs(all_costs):
    print("\n| pair | student alone (s/step) | KD | KD filling the cache | KD from the cache | KD / alone | "
          "fill / alone | cached / alone |")
    print("|---|---|---|---|---|---|---|---|")
    for pair, costs in all_costs.items():
        med = {m: statistics.median(v) for m, v in costs.items()}
        ratios = {m: statistics.median([c / a for c, a in zip(costs[m], costs["alone"])]) for m in MODES}
        print(f"| {pair} | {fmt(med['alone'])} | {fmt(med['KD'])} | {fmt(med['fill'])} | {fmt(med['cached'])} | "
              f"{ratios['KD']:.2f} | {ratios['fill']:.2f} | {ratios['cached']:.2f} |")
    print("(medians over repetitions of each run's median step; ratios: the median of the per-repetition ratios)")


# ----- cached vs uncached: the final metric ------------------------------------------------------------
def evaluate(cfg, weights, out_json, log, opts=()):
    run([PY, "tools/eval.py", "--config", cfg, "--model_path", weights, "--save_json", out_json] + list(opts), log)
    with open(out_json) as f:
        return json.load(f)


def metric_runs(out, seeds):
    from slim.apps.experiments import cls as cls_exp
    rows = {}
    # seg demo pair: trained teacher, best_model by val mIoU
    seg_t, seg_s = "configs/seg/demo/teacher.yml", "configs/seg/demo/student.yml"
    base = os.path.join(out, "metric", "seg")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    run([PY, "tools/prepare_data.py", "nuclei", "--out", "data/nuclei"], os.path.join(base, "prepare.log"))
    run([PY, "tools/train.py", "-c", seg_t, "--save_dir", os.path.join(base, "teacher"), "--seed", "0", "--do_eval",
         "--eval_interval", "100", "--log_iters", "100", "--save_interval", "100000"], os.path.join(base, "teacher.log"))
    teacher = os.path.join(base, "teacher", "best_model", "model.pdparams")
    rows["seg"] = seg_rows = {"uncached": [], "cached": [], "counts": []}
    for seed in range(seeds):
        common = ["--seed", str(seed), "--data_seed", "0", "--do_eval", "--eval_interval", "25", "--log_iters", "100",
                  "--save_interval", "100000", "-t", seg_t, "-c", seg_s, "--teacher_pretrained", teacher]
        for mode in ("uncached", "cached"):
            run_dir = os.path.join(base, f"{mode}{seed}")
            extra = ["--teacher_cache", os.path.join(base, "cache")] if mode == "cached" else []
            log = os.path.join(base, f"{mode}{seed}.log")
            run([PY, "slim/distill/distill_train.py", "--save_dir", run_dir] + common + extra, log)
            m = evaluate(seg_s, os.path.join(run_dir, "best_model", "model.pdparams"),
                         os.path.join(base, f"eval_{mode}{seed}.json"), os.path.join(base, f"eval_{mode}{seed}.log"))
            seg_rows[mode].append(m["mIoU"])
            if mode == "cached":
                seg_rows["counts"].append(cache_counts(log))
        print(f"  seg seed {seed}: uncached mIoU {seg_rows['uncached'][-1]:.4f}, cached {seg_rows['cached'][-1]:.4f} "
              f"(cache read/computed {seg_rows['counts'][-1]})", flush=True)

    # cls demo pair: trained teacher, last checkpoint's top-1
    base = os.path.join(out, "metric", "cls")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    data_dir = cls_exp.prepare(os.path.join(base, "prepare.log"), echo=False)
    opts = ["-o", *cls_exp.data_opts(data_dir)]
    cls_t, cls_s = PAIRS["cls"]["teacher"], PAIRS["cls"]["student"]
    run([PY, "tools/train.py", "-c", cls_t, "--save_dir", os.path.join(base, "teacher"), "--seed", "0", "--log_iters",
         "500", "--save_interval", "100000"] + opts, os.path.join(base, "teacher.log"))
    teacher = commands.last_checkpoint(os.path.join(base, "teacher"))
    rows["cls"] = cls_rows = {"uncached": [], "cached": [], "counts": []}
    for seed in range(seeds):
        common = ["--seed", str(seed), "--data_seed", "0", "--log_iters", "500", "--save_interval", "100000",
                  "-t", cls_t, "-c", cls_s, "--teacher_pretrained", teacher]
        for mode in ("uncached", "cached"):
            run_dir = os.path.join(base, f"{mode}{seed}")
            extra = ["--teacher_cache", os.path.join(base, "cache")] if mode == "cached" else []
            log = os.path.join(base, f"{mode}{seed}.log")
            run([PY, "slim/distill/distill_train.py", "--save_dir", run_dir] + common + extra + opts, log)
            m = evaluate(cls_s, commands.last_checkpoint(run_dir), os.path.join(base, f"eval_{mode}{seed}.json"),
                         os.path.join(base, f"eval_{mode}{seed}.log"), opts)
            cls_rows[mode].append(m["top1"])
            if mode == "cached":
                cls_rows["counts"].append(cache_counts(log))
        print(f"  cls seed {seed}: uncached top-1 {cls_rows['uncached'][-1]:.4f}, cached {cls_rows['cached'][-1]:.4f} "
              f"(cache read/computed {cls_rows['counts'][-1]})", flush=True)
    return rows


def summary(values):
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {std:.4f}"


def print_metrics(rows):
    print("\n| pair (metric) | KD, teacher every step | KD from the cache | per seed (uncached / cached) | "
          "cache: samples read / computed per run |")
    print("|---|---|---|---|---|")
    names = {"seg": "seg demo (val mIoU, best)", "cls": "cls demo (val top-1, last)"}
    for pair, r in rows.items():
        per_seed = ", ".join(f"{u:.4f}/{c:.4f}" for u, c in zip(r["uncached"], r["cached"]))
        counts = ", ".join(f"{a}/{b}" for a, b in r["counts"])
        print(f"| {names[pair]} | {summary(r['uncached'])} | {summary(r['cached'])} | {per_seed} | {counts} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--iters", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--skip_costs", action="store_true")
    p.add_argument("--skip_metrics", action="store_true")
    p.add_argument("--out", default="output/bench/teacher_cache")
    args = p.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    import platform
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '2')}", flush=True)
    if not args.skip_costs:
        run([PY, "tools/prepare_data.py", "nuclei", "--out", "data/nuclei"], os.path.join(out, "prepare.log"))
        from slim.apps.experiments import cls as cls_exp
        data_dir = cls_exp.prepare(os.path.join(out, "prepare_cls.log"), echo=False)
        all_costs = {}
        for pair in args.pairs:
            data_opts = ["-o", *cls_exp.data_opts(data_dir)] if pair == "cls" else []
            all_costs[pair] = cost_runs(pair, PAIRS[pair], out, args.reps, args.iters, data_opts)
        print_costs(all_costs)
        print_check_costs(all_costs, check_costs(all_costs, out, args.iters))
    if not args.skip_metrics:
        print_metrics(metric_runs(out, args.seeds))


if __name__ == "__main__":
    sys.exit(commands.main_guard(main))
