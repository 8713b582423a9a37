"""Run the command-line tools in-process (fast) or as real subprocesses."""
import importlib.util
import os
import subprocess
import sys

from slim.engine.launch import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = {"distill_train": "slim/distill/distill_train.py", "train": "tools/train.py", "eval": "tools/eval.py",
           "predict": "tools/predict.py", "export": "tools/export.py", "list_layers": "tools/list_layers.py",
           "prepare_data": "tools/prepare_data.py", "prune_layers": "tools/prune_layers.py"}


def load_script(name):
    path = os.path.join(ROOT, SCRIPTS[name])
    spec = importlib.util.spec_from_file_location(f"_cli_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name, *args):
    """The tool's exit code, as its command line would return it."""
    module = load_script(name)
    return run_main(lambda: module.main([str(a) for a in args]))


def run_process(name, *args, timeout=600, env=None):
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS[name])] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))
