"""Bad inputs give one clear error each: what was wrong and what to change, exit status 2, no Python
traceback, and nothing of an earlier run changed. Most cases fail before any training, in-process; a few
run as real processes to check that no traceback reaches the terminal."""
import hashlib
import os
import re
import shutil

import paddle
import pytest
import yaml

from tests.helpers.cli import run_process, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg, write_yaml

CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Tiny nuclei configs; an earlier run (iter_2, record.txt, history.jsonl); weights of another
    architecture (DeepLabV3P with a narrower ASPP head) and a truncated weights file."""
    root = tmp_path_factory.mktemp("bad_inputs")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    run = paths["run"] = root / "run"
    assert run_tool("train", "-c", paths["teacher"], "--iters", 2, "--save_interval", 2, "--log_iters", 1,
                    "--seed", 0, *CPU, "--save_dir", run) == 0
    with open(paths["teacher"]) as f:
        other = yaml.safe_load(f)
    other["model"]["aspp_out_channels"] = 64
    paths["other"] = write_yaml(str(root / "other.yml"), other)
    from slim.apps.launch import load_task_config
    task, cfg = load_task_config(paths["other"])
    paths["other_weights"] = root / "other.pdparams"
    paddle.save(task.build_model(cfg).state_dict(), str(paths["other_weights"]))
    data = (run / "iter_2" / "model.pdparams").read_bytes()
    paths["truncated"] = root / "truncated.pdparams"
    paths["truncated"].write_bytes(data[:len(data) // 2])
    partial = root / "partial" / "iter_2"  # a checkpoint without its training state
    partial.mkdir(parents=True)
    for name in ("model.pdparams", "model.pdopt"):
        shutil.copy(run / "iter_2" / name, partial / name)
    paths["partial"] = partial
    return paths


def exit_code(tool, *args):
    """run_tool's exit code; argparse's errors exit through SystemExit."""
    try:
        return run_tool(tool, *args)
    except SystemExit as e:
        return e.code


def snapshot(folder):
    """{relative path: sha1} of every file under folder."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


def assert_error(capsys, code, *fragments):
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert re.search(fragment, err), f"{fragment!r} not in:\n{err}"
    return err


# ----- flags ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, expected", [
    ("--iters", "-5", "must be a positive integer"),
    ("--iters", "0", "must be a positive integer"),
    ("--epochs", "0", "must be a positive integer"),
    ("--batch_size", "0", "must be a positive integer"),
    ("--save_interval", "0", "must be a positive integer"),
    ("--log_iters", "-1", "must be a positive integer"),
    ("--num_workers", "-1", "must be a whole number >= 0"),
    ("--iters", "many", "must be a positive integer"),
])
def test_bad_flag_values_are_refused_before_anything_runs(seg, tmp_path, capsys, flag, value, expected):
    code = exit_code("train", "-c", seg["teacher"], flag, value, *CPU, "--save_dir", tmp_path / "out")
    assert_error(capsys, code, f"argument {flag}: {expected}", re.escape(value))
    assert not (tmp_path / "out").exists()


def test_distill_shares_the_flag_checks(seg, tmp_path, capsys):
    code = exit_code("distill_train", "-c", seg["student"], "-t", seg["teacher"], "--batch_size", "0",
                     "--save_dir", tmp_path / "out")
    assert_error(capsys, code, "argument --batch_size: must be a positive integer")


def test_negative_iters_as_a_process_exits_2_without_traceback(seg, tmp_path):
    done = run_process("train", "-c", seg["teacher"], "--iters", "-5", *CPU, "--save_dir", tmp_path / "out",
                       env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "argument --iters: must be a positive integer" in done.stderr
    assert not (tmp_path / "out").exists()


# ----- configs ----------------------------------------------------------------------------------------
CONFIG_CASES = {
    "missing_file": (None, [], [r"Config file not found: .*nope\.yml", "-c/--config"]),
    "yaml_syntax": ("batch_size: 2\nmodel:\n  type: X\n  a: [1, 2\niters: 3\n", [],
                    [r"bad\.yml is not valid yaml at line 5", r"started at line 4", "Fix the yaml syntax"]),
    "not_a_mapping": ("- a\n- b\n", [], [r"must hold a mapping of `key: value` lines", "holds a list"]),
    "unknown_key": ("_base_: teacher.yml\nbatch_sise: 2\n", [],
                    [r"Unknown top-level key\(s\) in .*bad\.yml", "'batch_sise': did you mean 'batch_size'"]),
    "iters_text": ("_base_: teacher.yml\niters: many\n", [],
                   [r"`iters` in .*bad\.yml .*must be a positive integer, got 'many'", "Set e.g. `iters: 1000`"]),
    "batch_size_list": ("_base_: teacher.yml\nbatch_size: [2]\n", [],
                        [r"`batch_size` .* must be a positive integer, got \[2\] \(a list\)"]),
    "base_missing": ("_base_: nothere.yml\n", [],
                     [r"inherits \(`_base_`\) from .*nothere\.yml, which does not exist", "Fix the `_base_` path"]),
    "base_circular": ("_base_: loop.yml\n", [],
                      [r"inherits from itself through `_base_`: bad\.yml -> loop\.yml -> bad\.yml",
                       "Remove the `_base_` entry"]),
    "override_missing_section": ("_base_: teacher.yml\n", ["-o", "model.backbon.type=X"],
                                 [r"no section 'model\.backbon'", r"Did you mean model\.backbone\?",
                                  "only inside a section that exists"]),
    "override_unknown_key": ("_base_: teacher.yml\n", ["-o", "batch_sise=3"],
                             [r"Unknown top-level key\(s\) set with -o", "did you mean 'batch_size'"]),
    "override_wrong_type": ("_base_: teacher.yml\n", ["-o", "lr_scheduler.learning_rate=1e-3"],
                            [r"`lr_scheduler\.learning_rate` \(set with -o lr_scheduler\.learning_rate=\.\.\.\) must "
                             r"be a non-negative number", r"write it with a dot, 1\.0e-3"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_one_clear_error(seg, tmp_path, capsys, case):
    text, extra, fragments = CONFIG_CASES[case]
    shutil.copy(seg["teacher"], tmp_path / "teacher.yml")
    (tmp_path / "loop.yml").write_text("_base_: bad.yml\n")
    config = tmp_path / ("nope.yml" if text is None else "bad.yml")
    if text is not None:
        config.write_text(text)
    # no --iters here: the flag would replace the config's `iters`
    code = run_tool("train", "-c", config, *CPU, "--save_dir", tmp_path / "out", *extra)
    assert_error(capsys, code, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_new_key_inside_an_existing_section_is_still_accepted(seg, tmp_path):
    from slim.distill.config import load_config
    cfg = load_config(seg["teacher"], opts=["model.pretrained=null", "test_config.aug_eval=true"],
                      check_keys=False)
    assert cfg.model.pretrained is None and cfg.test_config.aug_eval is True


# ----- weights ----------------------------------------------------------------------------------------
def distill(seg, tmp_path, *extra):
    return run_tool("distill_train", "-c", seg["student"], "-t", seg["teacher"], "--iters", 1, *CPU,
                    "--save_dir", tmp_path / "out", *extra)


def test_teacher_weights_missing(seg, tmp_path, capsys):
    code = distill(seg, tmp_path, "--teacher_pretrained", tmp_path / "nope.pdparams")
    assert_error(capsys, code, r"teacher weights not found: .*nope\.pdparams", r"Give a `\.pdparams` file")
    assert not (tmp_path / "out").exists()


def test_teacher_weights_truncated(seg, tmp_path, capsys):
    code = distill(seg, tmp_path, "--teacher_pretrained", seg["truncated"])
    assert_error(capsys, code, r"Could not read teacher weights from .*truncated\.pdparams", "truncated",
                 "Give a complete .pdparams file")
    assert not (tmp_path / "out").exists()


def test_teacher_weights_of_another_architecture(seg, tmp_path, capsys):
    code = distill(seg, tmp_path, "--teacher_pretrained", seg["other_weights"])
    assert_error(capsys, code, r"teacher weights .*other\.pdparams do not fit DeepLabV3P",
                 r"only \d+/\d+ of its tensors would load", r"shape mismatch \(\d+\)",
                 "A teacher must load every parameter")
    assert not (tmp_path / "out").exists()


def test_init_weights_of_another_architecture(seg, tmp_path, capsys):
    code = run_tool("train", "-c", seg["teacher"], "--init_weights", seg["other_weights"], "--iters", 1, *CPU,
                    "--save_dir", tmp_path / "out")
    assert_error(capsys, code, r"student weights .*other\.pdparams do not fit DeepLabV3P",
                 r"only \d+/\d+ of its tensors would load", "Check that the config builds the model")
    assert not (tmp_path / "out").exists()


# ----- resuming ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing_folder", "partial_checkpoint", "another_model"])
def test_bad_resume_leaves_the_save_dir_untouched(seg, capsys, case):
    run = seg["run"]
    before = snapshot(run)
    config, resume, fragments = {
        "missing_folder": (seg["teacher"], run / "iter_99",
                           [r"--resume_model '.*iter_99' does not exist", "or `auto`"]),
        "partial_checkpoint": (seg["teacher"], seg["partial"],
                               [r"cannot be resumed: it has no train_state\.pdstates", "--init_weights",
                                "Nothing in --save_dir was changed"]),
        "another_model": (seg["other"], run / "iter_2",
                          [r"checkpoint .*iter_2 do not fit DeepLabV3P", r"only \d+/\d+ of its tensors",
                           "saved from another model", "Nothing in --save_dir was changed"]),
    }[case]
    code = run_tool("train", "-c", config, "--resume_model", resume, "--iters", 4, *CPU, "--save_dir", run)
    assert_error(capsys, code, *fragments)
    assert snapshot(run) == before


# ----- the output folder ------------------------------------------------------------------------------
def test_save_dir_that_is_a_file_exits_2_without_traceback(seg, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine\n")
    done = run_process("train", "-c", seg["teacher"], "--iters", 1, *CPU, "--save_dir", target,
                       env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "is an existing file, not a folder" in done.stderr and "Give a folder" in done.stderr
    assert target.read_text() == "mine\n"


def test_save_dir_not_writable(seg, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("running as root: root can write into a folder of mode 0o500 anyway")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code = run_tool("train", "-c", seg["teacher"], "--iters", 1, *CPU, "--save_dir", locked)
        assert_error(capsys, code, "--save_dir .*locked is not writable", "permission denied", r"chmod u\+w")
        code = run_tool("train", "-c", seg["teacher"], "--iters", 1, *CPU, "--save_dir", locked / "out")
        assert_error(capsys, code, "cannot be created: .*locked is not writable")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_save_dir_denied_by_permissions_even_when_root(seg, tmp_path, capsys, monkeypatch):
    """The same check where root would be refused (as root every folder is writable, so deny it here)."""
    from slim.engine import checkpoint
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(checkpoint.os, "access",
                        lambda path, mode: False if str(path) == str(locked) else real_access(path, mode))
    code = run_tool("train", "-c", seg["teacher"], "--iters", 1, *CPU, "--save_dir", locked)
    assert_error(capsys, code, "--save_dir .*locked is not writable", "permission denied", r"chmod u\+w")
    assert os.listdir(locked) == []


def test_save_dir_of_another_run_is_refused(seg, capsys):
    run = seg["run"]
    before = snapshot(run)
    code = run_tool("train", "-c", seg["teacher"], "--iters", 1, *CPU, "--save_dir", run)
    assert_error(capsys, code, r"already holds checkpoints of another run \(iter_2\)", "--resume_model auto",
                 "--overwrite", r"nothing was overwritten")
    assert snapshot(run) == before


def test_overwrite_moves_the_earlier_run_aside_and_starts_anew(seg, tmp_path, capsys):
    save_dir = tmp_path / "run"
    shutil.copytree(seg["run"], save_dir)
    (save_dir / "previous_run_1").mkdir()  # the user's own folder of that name is left alone
    (save_dir / "previous_run_1" / "keep.txt").write_text("mine\n")
    (save_dir / "notes.txt").write_text("mine too\n")
    earlier = snapshot(seg["run"])
    assert run_tool("train", "-c", seg["teacher"], "--iters", 1, "--save_interval", 1, *CPU,
                    "--save_dir", save_dir, "--overwrite") == 0
    assert snapshot(save_dir / "previous_run_2") == earlier  # iter_2, record.txt, history.jsonl, unchanged
    assert (save_dir / "previous_run_1" / "keep.txt").read_text() == "mine\n"
    assert (save_dir / "notes.txt").read_text() == "mine too\n"
    assert (save_dir / "iter_1" / "model.pdparams").is_file() and not (save_dir / "iter_2").exists()
    record = (save_dir / "record.txt").read_text()
    assert "--overwrite: moved the earlier run's iter_2, history.jsonl, record.txt into" in record
    assert "previous_run_2" in capsys.readouterr().out


def test_overwrite_with_resume_is_refused(seg, capsys):
    run = seg["run"]
    before = snapshot(run)
    code = run_tool("train", "-c", seg["teacher"], "--iters", 4, *CPU, "--save_dir", run, "--overwrite",
                    "--resume_model", "auto")
    assert_error(capsys, code, "--overwrite starts a new run and --resume_model continues", "give one of them")
    assert snapshot(run) == before


# ----- evaluation -------------------------------------------------------------------------------------
def test_eval_with_missing_weights_exits_2_without_traceback(seg, tmp_path):
    done = run_process("eval", "-c", seg["teacher"], "--model_path", tmp_path / "nope.pdparams", *CPU,
                       env={"OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert re.search(r"weights \(--model_path\) not found: .*nope\.pdparams", done.stderr), done.stderr


def test_eval_with_weights_of_another_model(seg, capsys):
    code = run_tool("eval", "-c", seg["teacher"], "--model_path", seg["other_weights"], *CPU)
    assert_error(capsys, code, r"weights \(--model_path\) .*other\.pdparams do not fit DeepLabV3P",
                 r"only \d+/\d+ of its tensors would load", "Check that the config builds the model")
