"""The classification distillation experiment, with the package's own commands (demo and benchmark).

For one seed: train the teacher, train the student alone, distil the teacher into the student (KD), distil
with the teacher's classifier shared and frozen (KD + frozen head), then evaluate the four with
tools/eval.py (top-1, top-5, recall@1 of feature matching). Every step is the command a user would type;
it is printed before it runs, its full output kept in a log file. Weights of the last iteration are
evaluated (best_model/ is picked on the same validation set, so it would flatter every run).
"""
import json
import os
import time
from functools import partial

from slim.apps import commands
from slim.apps.commands import PY, ROOT, last_checkpoint

CONFIGS = {
    "teacher": "configs/cls/convnet_teacher_mnist.yml",
    "student": "configs/cls/convnet_student_mnist.yml",
    "head_fixed": "configs/cls/convnet_student_mnist_head_fixed.yml",
}
# The measured setting (demo and benchmark): the MNIST-5k file with at most 100 images per class and split
# (1000 train / 1000 val), every run 3000 iterations. With 4000 training images the student alone comes
# within about a point of the teacher; with 1000 the gap is wider and what the teacher's soft labels add
# shows (distillation helps most where labels are scarce).
PER_CLASS = 100
ITERS = 3000
RUNS = [("teacher", "teacher"), ("student alone", "student"), ("KD", "kd"), ("KD + frozen head", "kd_head")]
SHOW = commands.SHOW + ("[EVAL]", "head_from_teacher", "embedding_projection")
run = partial(commands.run, show=SHOW, every=5)


def count_parameters(run_dir, head_frozen=False):
    import paddle
    state = paddle.load(last_checkpoint(run_dir))
    total = sum(int(v.size) for k, v in state.items() if not k.endswith(("_mean", "_variance")))
    head = sum(int(v.size) for k, v in state.items() if k.startswith("head."))
    return total, (total - head if head_frozen else total)


def data_opts(data_dir):
    """The -o overrides that point the MNIST configs at another prepared folder."""
    return [f"{split}_dataset.{key}={data_dir}{suffix}" for split in ("train", "val")
            for key, suffix in (("dataset_root", ""), ("file_list", f"/{split}_list.txt"))]


def prepare(log_path, per_class=PER_CLASS, echo=True):
    """tools/prepare_data.py mnist with at most `per_class` images per class and split (0: all) into
    data/mnist_per_class<N> (data/mnist); returns that folder."""
    data_dir = f"data/mnist_per_class{per_class}" if per_class else "data/mnist"
    run([PY, "tools/prepare_data.py", "mnist", "--out", data_dir] + (["--per_class", str(per_class)] if per_class else []),
        log_path, echo=echo)
    return data_dir


def split_sizes(data_dir):
    """'1000 train / 1000 val' from the prepared folder's prepared.json."""
    with open(os.path.join(ROOT, data_dir, "prepared.json")) as f:
        counts = json.load(f)["counts"]
    return f"{sum(counts['train'].values())} train / {sum(counts['val'].values())} val"


def run_seed(out, seed, configs=None, extra=(), log_iters=100, echo=True, teacher_weights=None, opts=()):
    """Train and evaluate the four models of one seed under out/; returns {run name: metrics + time}.
    `opts`: config overrides (-o) for every command, evaluation included."""
    configs = dict(CONFIGS, **(configs or {}))
    opts = ["-o", *opts] if opts else []
    runs_dir, logs = os.path.join(out, "runs"), os.path.join(out, "logs")
    os.makedirs(runs_dir, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    common = ["--seed", str(seed), "--log_iters", str(log_iters), "--save_interval", "100000"] + list(extra) + opts
    dirs = {key: os.path.join(runs_dir, key) for _, key in RUNS}
    times = {}
    if teacher_weights is None:
        if echo:
            print("== teacher", flush=True)
        times["teacher"] = run([PY, "tools/train.py", "--config", configs["teacher"], "--save_dir", dirs["teacher"]]
                               + common, os.path.join(logs, "teacher.log"), echo=echo)
        teacher_weights = last_checkpoint(dirs["teacher"])
    if echo:
        print("== student alone", flush=True)
    times["student"] = run([PY, "tools/train.py", "--config", configs["student"], "--save_dir", dirs["student"]]
                           + common, os.path.join(logs, "student.log"), echo=echo)
    for key, cfg, title in (("kd", configs["student"], "KD (CE + KL on the logits)"),
                            ("kd_head", configs["head_fixed"], "KD + the teacher's classifier, shared and frozen")):
        if echo:
            print(f"== {title}", flush=True)
        times[key] = run([PY, "slim/distill/distill_train.py", "--teacher_config", configs["teacher"],
                          "--student_config", cfg, "--teacher_pretrained", teacher_weights, "--save_dir", dirs[key]]
                         + common, os.path.join(logs, f"{key}.log"), echo=echo)
    if echo:
        print("== evaluation (tools/eval.py)", flush=True)
    results = {}
    cfg_of = {"teacher": configs["teacher"], "student": configs["student"], "kd": configs["student"],
              "kd_head": configs["head_fixed"]}
    for name, key in RUNS:
        if key == "teacher" and "teacher" not in times:
            weights, run_dir = teacher_weights, os.path.dirname(os.path.dirname(teacher_weights))
        else:
            weights, run_dir = last_checkpoint(dirs[key]), dirs[key]
        metrics_path = os.path.join(out, f"eval_{key}.json")
        run([PY, "tools/eval.py", "--config", cfg_of[key], "--model_path", weights, "--save_json", metrics_path,
             "--save_dir", os.path.join(out, "features", key)] + opts, os.path.join(logs, f"eval_{key}.log"), echo=echo)
        with open(metrics_path) as f:
            metrics = json.load(f)
        total, trained = count_parameters(run_dir, head_frozen=(key == "kd_head"))
        results[name] = dict(metrics, train_time_s=times.get(key), params=total, trained_params=trained,
                             weights=weights, cross_recall_at_1=cross_recall(out, key))
    return results


def cross_recall(out, key):
    """recall@1 of this model's val queries against the teacher's val gallery (None when the embeddings
    have different widths: only a student that shares the teacher's embedding space can be matched)."""
    import numpy as np
    from slim.tasks.cls.metrics import recall_at_1
    teacher = np.load(os.path.join(out, "features", "teacher", "val_embeddings.npy"))
    mine = np.load(os.path.join(out, "features", key, "val_embeddings.npy"))
    if mine.shape != teacher.shape:
        return None
    labels = np.load(os.path.join(out, "features", key, "val_labels.npy"))
    return recall_at_1(mine, labels, gallery_embeddings=teacher)[0]


def gap_closed(results, metric="top1"):
    """(distilled - alone) / (teacher - alone) for KD and KD + frozen head, or None without a gap."""
    t, s = results["teacher"][metric], results["student alone"][metric]
    if t - s <= 0:
        return None
    return {k: (results[k][metric] - s) / (t - s) for k in ("KD", "KD + frozen head")}


def table(results, title):
    lines = [title, "", "| model | parameters (trained) | top-1 | top-5 | recall@1 | recall@1 vs teacher gallery "
             "| train time (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, _ in RUNS:
        r = results[name]
        params = f"{r['params']:,}" + (f" ({r['trained_params']:,})" if r["trained_params"] != r["params"] else "")
        t = f"{r['train_time_s']:.0f}" if r.get("train_time_s") is not None else "-"
        cross = f"{r['cross_recall_at_1']:.4f}" if r.get("cross_recall_at_1") is not None and name != "teacher" else "-"
        lines.append(f"| {name} | {params} | {r['top1']:.4f} | {r['top5']:.4f} | {r['recall_at_1']:.4f} | {cross} "
                     f"| {t} |")
    closed = gap_closed(results)
    if closed:
        lines += ["", "share of the teacher-student top-1 gap closed: "
                  + ", ".join(f"{k} {v:+.0%}" for k, v in closed.items())]
    return "\n".join(lines)


def demo(args, out):
    """`make demo-cls` (tools/demo.py cls): prepare MNIST, the four runs of one seed, evaluation, table."""
    import shutil
    if os.path.isdir(os.path.join(out, "runs")):
        shutil.rmtree(os.path.join(out, "runs"))  # this folder belongs to the demo; each demo run starts afresh
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    print(f"== Classification + feature matching: MNIST, {PER_CLASS} images per class, ConvNet teacher -> tiny "
          f"ConvNet student (outputs in {out})", flush=True)
    t0 = time.time()
    data_dir = prepare(os.path.join(out, "logs", "prepare.log"))
    iters = 4 if args.quick else ITERS
    results = run_seed(out, args.seed, extra=["--iters", str(iters)], log_iters=2 if args.quick else 500,
                       opts=data_opts(data_dir))
    title = (f"MNIST, {PER_CLASS} images per class ({data_dir}: {split_sizes(data_dir)}), seed {args.seed}, {iters} "
             f"iterations per run; weights of the last iteration; recall@1 = cosine nearest neighbour of each val "
             f"query in a gallery of half of each val class")
    text = table(results, title)
    text += (f"\n\nconfigs: {CONFIGS['teacher']}, {CONFIGS['student']}, {CONFIGS['head_fixed']}; one seed "
             f"(`python bench/cls_gain.py --seeds 3` gives the mean and spread); total {time.time() - t0:.0f} s")
    print("\n" + text, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"results": results, "seed": args.seed}, f, indent=1)
    print(f"\nwrote {os.path.join(out, 'results.md')} and results.json; embeddings in {os.path.join(out, 'features')}",
          flush=True)
    return 0
