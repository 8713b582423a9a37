"""The depth-distillation experiment behind `make demo-depth` and `bench/depth_gain.py`.

Nuclei segmentation. Teacher: SegFormer's head on a 14-block MSCAN backbone (block lists of 2, 2, 8, 2
blocks), trained alone. Four students, all the same 7-block model (1, 1, 4, 1), each trained for the
same budget of iterations with the package's own commands:

- alone:        tools/train.py from scratch (CE)
- KD (direct):  distill_train.py from scratch, CE + KL on the logits of the teacher
- cut at once:  the pipeline with `remove_iters: 0`: the teacher's weights with every second block dropped
                at once, then the same losses and iterations as the progressive student
- progressive:  the pipeline configs/depth/nuclei_progressive.yml: initialised from the teacher, blocks
                fading out under feature supervision (40% of the budget), cut, fine-tuned (60%)

Each run's weights of the last iteration are evaluated with tools/eval.py (best_model/ is picked on the
same validation set, so it would flatter every run); the inference latency of each model is measured in
this process: median of N forwards of the same 1x3x256x256 input, the models taking turns round by round.
"""
import json
import os
import statistics
import time
from functools import partial

from slim.apps import commands
from slim.apps.commands import PY, ROOT, last_checkpoint
from slim.apps.pipeline import STATE_FILE, handed_weights

CONFIGS = {"teacher": "configs/depth/segformer_mscan_d14_nuclei.yml",
           "student": "configs/depth/segformer_mscan_d7_nuclei.yml",
           "pipeline": "configs/depth/nuclei_progressive.yml"}
VARIANTS = [("student alone", "alone"), ("KD (direct)", "kd"), ("cut at once + fine-tune", "cut_at_once"),
            ("progressive removal (pipeline)", "progressive")]
SHOW = ("[TRAIN]", "[EVAL] #Images", "== stage", "cut checked", "remove factor a = 0 ", "error", "Error", "Traceback")
run = partial(commands.run, show=SHOW, every=4)


def pipeline_output(run_dir):
    with open(os.path.join(run_dir, STATE_FILE)) as f:
        state = json.load(f)
    return handed_weights(list(state["done"].values())[-1])


def pipeline_overrides(budget):
    """The pipeline's stage lengths for a student budget of `budget` iterations: 40% in the removal stage
    (blocks fading out over its first 30%), 60% fine-tuning the cut model."""
    remove = max(2, round(0.4 * budget))
    return [f"stages.0.iters={remove}", f"stages.0.remove_iters={max(1, round(0.3 * budget))}",
            f"stages.1.iters={budget - remove}"]


def train_teacher(out, seed, quick=False, echo=True):
    run_dir = os.path.join(out, "teacher")
    t = run([PY, "tools/train.py", "--config", CONFIGS["teacher"], "--save_dir", run_dir, "--seed", str(seed),
             "--log_iters", "50", "--save_interval", "100000"] + (["--iters", "4"] if quick else []),
            os.path.join(out, "logs", "teacher.log"), echo=echo)
    return last_checkpoint(run_dir), t


def train_students(out, seed, budget, teacher_weights, echo=True):
    """The four 7-block students of one seed and budget under out/seed{seed}/iters{budget}/; returns
    {key: (weights, train seconds)}. Every student runs `budget` iterations."""
    run_root = os.path.join(out, f"seed{seed}", f"iters{budget}")
    logs = os.path.join(out, "logs")
    common = ["--seed", str(seed), "--log_iters", "25", "--save_interval", "100000"]
    scratch = ["--iters", str(budget), "-o", f"lr_scheduler.warmup_iters={max(1, budget // 10)}"]
    teacher_opts = [f"stages.0.teacher.weights={teacher_weights}", f"stages.1.teacher.weights={teacher_weights}"]
    results = {}
    for title, key in VARIANTS:
        run_dir = os.path.join(run_root, key)
        log = os.path.join(logs, f"seed{seed}_iters{budget}_{key}.log")
        if echo:
            print(f"== seed {seed}, {budget} iterations: {title}", flush=True)
        if key == "alone":
            cmd = [PY, "tools/train.py", "--config", CONFIGS["student"], "--save_dir", run_dir] + common + scratch
        elif key == "kd":
            cmd = [PY, "slim/distill/distill_train.py", "--teacher_config", CONFIGS["teacher"], "--student_config",
                   CONFIGS["student"], "--teacher_pretrained", teacher_weights, "--save_dir", run_dir] + common + scratch
        else:  # overrides apply in order: `remove_iters=0` (all blocks cut at once) comes last
            opts = teacher_opts + pipeline_overrides(budget) + (
                ["stages.0.remove_iters=0"] if key == "cut_at_once" else [])
            cmd = [PY, "slim/distill/distill_train.py", "--pipeline", CONFIGS["pipeline"], "--save_dir", run_dir] \
                + common + ["-o"] + opts
        t = run(cmd, log, echo=echo)
        weights = pipeline_output(run_dir) if key in ("cut_at_once", "progressive") else last_checkpoint(run_dir)
        results[key] = (weights, t)
    return results


def evaluate(config, weights, out_json, log, echo=True):
    run([PY, "tools/eval.py", "--config", config, "--model_path", weights, "--save_json", out_json], log, echo=echo)
    with open(out_json) as f:
        return json.load(f)


def measure_latency(models, runs=25, shape=(1, 3, 256, 256), warmup=3):
    """{name: median ms} of `runs` forwards of one fixed input per model (eval, no grad), in this process;
    the models take turns each round so that a change in machine load hits them all alike."""
    import paddle

    from slim.apps import launch

    from slim.engine import env
    env.set_device("cpu")
    built = {}
    for name, (config, weights) in models.items():
        task, cfg = launch.load_task_config(os.path.join(ROOT, config))
        model = task.build_model(cfg)
        task.load_weights(model, weights)
        model.eval()
        built[name] = model
    paddle.seed(0)
    x = paddle.randn(list(shape))
    times = {name: [] for name in built}
    with paddle.no_grad():
        for _ in range(warmup):
            for model in built.values():
                model(x)
        for _ in range(runs):
            for name, model in built.items():
                t0 = time.perf_counter()
                model(x)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def latency_threads():
    import slim
    return int(slim.USER_OMP_NUM_THREADS or os.cpu_count() or 1)  # what env.set_device("cpu") uses


def count_parameters(weights):
    from slim.engine.checkpoint import load_state
    state = load_state(weights)
    return sum(int(v.size) for k, v in state.items() if not k.endswith(("_mean", "_variance")))


def summary(values):
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def experiment(out, seeds, budgets, quick=False, echo=True, latency_runs=25, teacher_seed=0):
    """Teacher once (seed `teacher_seed`), the four students for each seed and budget, evaluation, latency."""
    os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    evals = os.path.join(out, "eval")
    os.makedirs(evals, exist_ok=True)
    t0 = time.time()
    run([PY, "tools/prepare_data.py", "nuclei", "--out", "data/nuclei"], os.path.join(out, "logs", "prepare.log"), echo=echo)
    if echo:
        print("== teacher (14 blocks)", flush=True)
    teacher_weights, teacher_time = train_teacher(out, teacher_seed, quick, echo)
    teacher = evaluate(CONFIGS["teacher"], teacher_weights, os.path.join(evals, "teacher.json"),
                       os.path.join(out, "logs", "eval_teacher.log"), echo)
    students = {}  # "key@budget" -> {mIoU: [...], nucleus_IoU: [...], train_s: [...], weights: [...]}
    for seed in seeds:
        for budget in budgets:
            for key, (weights, t) in train_students(out, seed, budget, teacher_weights, echo).items():
                m = evaluate(CONFIGS["student"], weights, os.path.join(evals, f"seed{seed}_iters{budget}_{key}.json"),
                             os.path.join(out, "logs", f"eval_seed{seed}_iters{budget}_{key}.log"), echo)
                row = students.setdefault(f"{key}@{budget}", {"mIoU": [], "nucleus_IoU": [], "train_s": [],
                                                              "weights": []})
                row["mIoU"].append(m["mIoU"])
                row["nucleus_IoU"].append(m["class_IoU"][1])
                row["train_s"].append(t)
                row["weights"].append(weights)
            if echo:
                print(f"seed {seed}, {budget} iterations: " + ", ".join(
                    f"{k} {students[f'{k}@{budget}']['mIoU'][-1]:.4f}" for _, k in VARIANTS), flush=True)
    if echo:
        print(f"== inference latency: median of {latency_runs} forwards of one 1x3x256x256 input", flush=True)
    models = {"teacher": (CONFIGS["teacher"], teacher_weights)}
    models.update({key: (CONFIGS["student"], students[f"{key}@{budgets[-1]}"]["weights"][0]) for _, key in VARIANTS})
    return {"teacher": dict(teacher, train_s=teacher_time, weights=teacher_weights,
                            iters=int(os.path.basename(os.path.dirname(teacher_weights))[len("iter_"):]),
                            params=count_parameters(teacher_weights)),
            "students": students, "latency_ms": measure_latency(models, runs=latency_runs),
            "latency_runs": latency_runs, "threads": latency_threads(), "seeds": list(seeds), "budgets": list(budgets), "quick": quick,
            "student_params": count_parameters(models["alone"][1]), "total_s": time.time() - t0}


def table(result):
    seeds, budgets = result["seeds"], result["budgets"]
    t, lat, rows = result["teacher"], result["latency_ms"], result["students"]
    over = f"mean ± std (range) over seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [f"Nuclei segmentation (40 train / 15 val slices). Teacher: 14 blocks, trained alone; students: 7 blocks, "
             f"each trained for the given number of iterations. mIoU of the weights of the last iteration, {over}. "
             f"Latency: median of {result['latency_runs']} forwards of one 1x3x256x256 input, all models in one "
             f"process, CPU ({result.get('threads', '?')} threads).", "",
             "| model | blocks | parameters | latency (ms) | " + " | ".join(f"mIoU, {b} iterations" for b in budgets)
             + " |", "| --- | --- | --- | ---" + " | ---" * len(budgets) + " |",
             f"| teacher (its own {t['iters']} iterations) | 14 | {t['params']:,} | {lat['teacher']:.1f} | "
             + " | ".join(f"{t['mIoU']:.4f}" for _ in budgets) + " |"]
    for title, key in VARIANTS:
        lines.append(f"| {title} | 7 | {result['student_params']:,} | {lat[key]:.1f} | "
                     + " | ".join(summary(rows[f"{key}@{b}"]["mIoU"]) for b in budgets) + " |")
    student_lat = statistics.median(lat[k] for _, k in VARIANTS)
    lines += ["", f"7-block latency / teacher latency: {student_lat / lat['teacher']:.2f}"]
    for b in budgets:
        prog = rows[f"progressive@{b}"]["mIoU"]
        diffs = {title: [p - o for p, o in zip(prog, rows[f"{key}@{b}"]["mIoU"])]
                 for title, key in VARIANTS if key != "progressive"}
        lines.append(f"{b} iterations, progressive minus: " + "; ".join(
            f"{title} " + ", ".join(f"{d:+.4f}" for d in ds) for title, ds in diffs.items()) + " (mIoU, per seed)")
    times = ", ".join(f"{title} {statistics.median(rows[f'{key}@{budgets[-1]}']['train_s']):.0f} s"
                      for title, key in VARIANTS)
    lines.append(f"training time at {budgets[-1]} iterations (median, process start included): {times}")
    if result.get("quick"):
        lines.append("(--quick: the teacher trained 4 iterations; these numbers only check the commands)")
    return "\n".join(lines)


def write(result, out):
    text = table(result)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    return text


def demo(args, out):
    """`make demo-depth` (tools/demo.py depth): the teacher, the four 7-block students of one seed at two
    budgets (25 and 100 iterations), evaluation, latency, table."""
    import shutil
    for name in ("teacher", f"seed{args.seed}"):
        if os.path.isdir(os.path.join(out, name)):
            shutil.rmtree(os.path.join(out, name))  # this folder belongs to the demo; each run starts afresh
    print(f"== Depth distillation: nuclei, SegFormer-MSCAN 14 blocks -> 7 blocks (outputs in {out})", flush=True)
    budgets = [4] if args.quick else [25, 100]
    result = experiment(out, [args.seed], budgets, quick=args.quick, teacher_seed=args.seed)
    text = write(result, out)
    print("\n" + text + f"\n\ntotal {result['total_s']:.0f} s; `python bench/depth_gain.py --seeds 2` gives the "
          f"mean and spread over seeds\nwrote {os.path.join(out, 'results.md')} and results.json", flush=True)
    return 0
