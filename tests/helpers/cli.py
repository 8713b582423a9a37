"""Run the command-line tools in-process (fast) or as real subprocesses."""
import importlib
import json
import os
import subprocess
import sys

from slim.apps.launch import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = {"distill_train": "slim/distill/distill_train.py", "train": "tools/train.py", "eval": "tools/eval.py",
           "predict": "tools/predict.py", "infer": "tools/infer.py", "export": "tools/export.py", "list_layers": "tools/list_layers.py",
           "prepare_data": "tools/prepare_data.py", "prune_layers": "tools/prune_layers.py", "ptq": "tools/ptq.py",
           "cache": "tools/cache.py"}


# the module each script runs (slim/apps/); in-process runs call its main() directly
MODULES = {"distill_train": "distill", "train": "train", "eval": "evaluate", "predict": "predict", "infer": "infer", "export": "export",
           "list_layers": "list_layers", "prepare_data": "prepare_data", "prune_layers": "prune_layers", "ptq": "ptq",
           "cache": "cache"}


def run_tool(name, *args):
    """The tool's exit code, as its command line would return it."""
    module = importlib.import_module(f"slim.apps.{MODULES[name]}")
    return run_main(lambda: module.main([str(a) for a in args]))


def run_process(name, *args, timeout=600, env=None):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS[name])] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def logged_losses(save_dir):
    """[(iteration, {term: value})] of the loss terms a run logged to its history.jsonl."""
    rows = []
    with open(os.path.join(save_dir, "history.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "Train/loss" in row:
                rows.append((row["iter"], {k: v for k, v in row.items() if k.startswith("Train/") and "lr" not in k
                                           and "cost" not in k and "ips" not in k}))
    return rows
