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


def console_scripts():
    """The console scripts pyproject.toml declares."""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        section = f.read().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return re.findall(r"^(slim-[\w-]+) *=", section, re.M)


def answers_help(commands, cwd):
    """Run each command with --help, a few at a time (each imports paddle); the failures, named."""
    from concurrent.futures import ThreadPoolExecutor

    def one(cmd):
        done = subprocess.run(cmd + ["--help"], cwd=cwd, env=outside_env(), capture_output=True, text=True,
                              timeout=300)
        ok = done.returncode == 0 and "usage:" in done.stdout
        return None if ok else f"{' '.join(cmd)}: exit {done.returncode}\n{done.stderr[-2000:]}"

    with ThreadPoolExecutor(max_workers=3) as pool:
        return [failure for failure in pool.map(one, commands) if failure]


def test_every_console_script_answers_help_from_outside_the_checkout(tmp_path):
    scripts = console_scripts()
    assert {"slim-distill", "slim-train", "slim-eval", "slim-export", "slim-ptq", "slim-act", "slim-cache"} <= set(scripts)
    bin_dir = os.path.dirname(sys.executable)
    missing = [s for s in scripts if not os.path.isfile(os.path.join(bin_dir, s))]
    assert not missing, f"{missing} not installed (make install)"
    failures = answers_help([[os.path.join(bin_dir, s)] for s in scripts], tmp_path)
    assert not failures, "\n".join(failures)


def test_the_documented_scripts_answer_help():
    scripts = ["slim/distill/distill_train.py"] + [f"tools/{name}" for name in sorted(os.listdir(os.path.join(ROOT, "tools")))
                                                  if name.endswith(".py")]
    failures = answers_help([[sys.executable, script] for script in scripts], ROOT)
    assert not failures, "\n".join(failures)
