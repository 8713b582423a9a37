"""The documentation site builds with --strict (no broken link or reference), its generated tables hold every
registered loss and every flag of every command, the troubleshooting page names every error class, and the
getting-started commands run as written."""
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.helpers.cli import ROOT

sys.path.insert(0, os.path.join(ROOT, "docs", "hooks"))
import reference  # noqa: E402  (docs/hooks/reference.py: the tables' generator)

MKDOCS = os.path.join(os.path.dirname(sys.executable), "mkdocs")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([MKDOCS, "build", "--strict", "-d", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    # mkdocs's own warnings (its log lines start "WARNING -"; Paddle's import prints other WARNING lines)
    assert not re.search(r"^WARNING +-", done.stderr, re.M), done.stderr[-5000:]
    return out


def page(site, path):
    with open(os.path.join(site, path, "index.html")) as f:
        return f.read()


def test_the_loss_table_holds_every_registered_loss_and_name(site):
    html = page(site, "reference/losses")
    for module in reference.loss_modules():
        importlib.import_module(module)
    from slim.distill.losses.registry import LOSSES
    assert LOSSES, "the registry is empty"
    for name, cls in LOSSES.items():
        assert f"<code>{cls.__name__}</code>" in html, cls.__name__
        assert name in html, name
    rows = re.findall(r"<tr>\s*<td><code>(\w+)</code></td>", html)
    assert sorted(rows) == sorted({cls.__name__ for cls in LOSSES.values()})


@pytest.mark.parametrize("command", sorted(reference.COMMANDS))
def test_the_flag_tables_hold_every_flag_of_every_command(site, command):
    html = page(site, "reference/flags")
    rows = reference.flag_rows(command)
    assert rows, command
    for flags, _, _ in rows:
        for flag in flags.split(" ")[-1:] + [f for f in re.split(r",\s*", flags) if f.startswith("-")]:
            assert flag.split(" ")[-1] in html, (command, flag)


def test_every_error_class_is_explained_on_the_troubleshooting_page():
    from slim.distill.errors import SlimError
    for module in ("slim.engine.storage", "slim.engine.teacher_cache", "slim.engine.weights", "slim.apps.launch",
                   "slim.tasks.det.task", "slim.tasks.ppcls.task", "slim.quant"):
        importlib.import_module(module)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    text = open(os.path.join(ROOT, "docs", "troubleshooting.md")).read()
    names = {SlimError.__name__} | {c.__name__ for c in subclasses(SlimError) if not c.__name__.startswith("_")}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/troubleshooting.md does not explain {missing}"


def getting_started_commands():
    text = open(os.path.join(ROOT, "docs", "getting-started.md")).read()
    block = text.split("## A first distillation by hand", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(c) for c in block.replace("\\\n", " ").strip().split("\n")]


def test_the_getting_started_commands_run_as_written(tmp_path):
    commands = getting_started_commands()
    assert [c[1] for c in commands] == ["tools/prepare_data.py", "tools/train.py", "slim/distill/distill_train.py",
                                        "tools/eval.py"]
    for cmd in commands:
        cmd = [sys.executable if c == "python" else str(tmp_path / c[len("output/start/"):])
               if c.startswith("output/start") else c for c in cmd]
        if "train" in cmd[1]:
            cmd += ["--iters", "2", "--device", "cpu"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, OMP_NUM_THREADS="2"))
        assert done.returncode == 0, " ".join(cmd) + "\n" + done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "distill" / "best_model" / "model.pdparams").is_file()


def test_the_readme_is_a_short_front_page_whose_links_exist():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert len(text.splitlines()) < 300
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert "docs/index.md" in links
    missing = [link for link in links if not link.startswith("http") and not os.path.exists(os.path.join(ROOT, link))]
    assert not missing, missing
