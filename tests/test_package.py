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
