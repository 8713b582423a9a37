"""The package as users install and import it: the README's own-loop example run as written from a folder
outside the checkout, the public names, the layering of the folders."""
import os
import re
import subprocess
import sys

from tests.helpers.cli import ROOT


def readme_python_block(section):
    text = open(os.path.join(ROOT, "README.md")).read()
    body = text.split(f"\n{section}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def outside_env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_the_readme_own_loop_example_runs_as_written_outside_the_checkout(tmp_path):
    script = tmp_path / "own_loop.py"
    script.write_text(readme_python_block("## Use it in your own training loop"))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=outside_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split(" ", 2) for line in done.stdout.splitlines() if re.match(r"^\d ", line)]
    assert [s[0] for s in steps] == ["0", "1", "2"]
    terms = [eval(s[2]) for s in steps]  # {'kd': ..., 'stage3': ...}
    assert all(set(t) == {"kd", "stage3"} for t in terms)
    assert terms[-1]["kd"] < terms[0]["kd"]  # the student moves towards the teacher


def test_the_public_names_import_from_outside_the_checkout(tmp_path):
    code = ("from slim.distill import (AdaptorBase, ConfigError, Distiller, DistillOutput, LayerRef, SlimError, "
            "build_loss, format_layers, freeze_teacher, list_layers, load_config, parse_pairs)\n"
            "from slim.distill.losses import register_loss\n"
            "import slim.distill as d\n"
            "assert callable(d.Distiller.build) and callable(d.Distiller.parameters)\n"
            "print(sorted(d.__all__))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=outside_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Distiller" in done.stdout and "parse_pairs" in done.stdout


SCRIPTS = ["slim-distill", "slim-train", "slim-eval", "slim-predict", "slim-infer", "slim-export", "slim-list-layers",
           "slim-prune-layers", "slim-prepare-data", "slim-demo", "slim-ptq", "slim-cache"]


def test_every_console_script_answers_help_from_outside_the_checkout(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    for script in SCRIPTS:
        path = os.path.join(bin_dir, script)
        assert os.path.isfile(path), f"{script} is not installed (make install)"
        done = subprocess.run([path, "--help"], cwd=tmp_path, env=outside_env(), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{script}: {done.stderr[-2000:]}"
        assert "usage:" in done.stdout, script


def test_the_folders_depend_in_one_direction():
    """distill (engine) <- engine (trainer) <- tasks, depth, quant <- apps <- tools, bench."""
    forbidden = {
        "slim/distill": r"(from|import) +slim\.(engine|tasks|depth|quant|apps)\b|from \.\.(engine|tasks|depth|quant|apps)\b",
        "slim/engine": r"(from|import) +slim\.(tasks|depth|quant|apps)\b|from \.\.(tasks|depth|quant|apps)\b",
        "slim/tasks": r"(from|import) +slim\.(apps|depth)\b",
        "slim/depth": r"(from|import) +slim\.(apps|tasks)\b",
        "slim/quant": r"(from|import) +slim\.(apps|tasks|depth)\b",
    }
    found = []
    for folder, pattern in forbidden.items():
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(base, name)
                    for n, line in enumerate(open(path), 1):
                        if re.search(pattern, line):
                            found.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
    tasks = os.path.join(ROOT, "slim", "tasks")
    drivers = [os.path.join(b, f) for b, _, fs in os.walk(tasks) for f in fs if f.startswith("experiment")]
    assert not drivers, drivers


def test_the_documented_scripts_answer_help():
    scripts = ["slim/distill/distill_train.py"] + [f"tools/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "tools")))
                                                  if name.endswith(".py")]
    for script in scripts:
        done = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=outside_env(), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage:" in done.stdout, f"{script}: {done.stderr[-2000:]}"
