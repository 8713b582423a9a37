"""Pipelines of stages end to end on tiny real data: the multi-stage flow, resume, errors, the prune tool."""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

from slim.engine.trainer import Trainer
from slim.tasks.seg import build_component
from tests.helpers.cli import ROOT, SCRIPTS, run_tool
from tests.helpers.depth_fixtures import (STUDENT_DEPTHS, flow_pipeline, make_depth_configs,
                                          segformer)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """One unbroken run of the 4-stage flow (distil, remove + cut, fine-tune, head only)."""
    root = tmp_path_factory.mktemp("depth")
    configs = make_depth_configs(str(root))
    pipeline = flow_pipeline(str(root), configs)
    out = root / "unbroken"
    assert run_tool("distill_train", "--pipeline", pipeline, "--save_dir", out, "--allow_untrained_teacher") == 0
    return {"root": root, "configs": configs, "pipeline": pipeline, "out": out}


def load(path):
    return {k: v.numpy() for k, v in paddle.load(str(path)).items()}


def state_of(run):
    with open(run / "pipeline_state.json") as f:
        return json.load(f)


def assert_same_weights(a, b):
    a, b = load(a), load(b)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_flow_runs_every_stage_in_its_folder_and_hands_weights_on(flow):
    out = flow["out"]
    assert sorted(n for n in os.listdir(out) if os.path.isdir(out / n)) == [
        "1_distil", "2_remove", "3_finetune", "4_head"]
    state = state_of(out)
    assert list(state["done"]) == ["distil", "remove", "finetune", "head"]
    cut = state["done"]["remove"]["cut"]
    assert cut["removal"] == {"backbone.block3": [1, 3]} and cut["kept"] == {"backbone.block3": [0, 2]}
    assert cut["max_abs_diff"] <= 1e-5
    # the cut weights load strictly into the shallow model
    shallow = build_component(segformer(STUDENT_DEPTHS))
    assert sorted(load(cut["weights"])) == sorted(shallow.state_dict())
    removal_log = (out / "2_remove" / "record.txt").read_text()
    assert "remove factor a = 0 at iteration 3" in removal_log
    assert "layer_s0_t0" in removal_log and "layer_s2_t2" in removal_log
    finetune_log = (out / "3_finetune" / "record.txt").read_text()
    assert f"student weights {cut['weights']}: loaded " in finetune_log
    assert f"teacher weights {state['done']['distil']['weights']}: loaded " in finetune_log
    # the layer pairs of the removal stage, renumbered through the cut: student block 2 is now block 1
    assert "'backbone.block3.1' vs teacher 'backbone.block3.2'" in finetune_log
    history = [json.loads(line) for line in (out / "2_remove" / "history.jsonl").read_text().splitlines()]
    factors = {row["iter"]: row["Train/remove_factor"] for row in history if "Train/remove_factor" in row}
    assert factors == {1: pytest.approx(0.75), 2: pytest.approx(0.25), 3: 0.0, 4: 0.0}
    summary = (out / "summary.md").read_text()
    assert "| head |" in summary and "cut/model.pdparams" in summary


def test_head_only_stage_trains_only_the_named_parts(flow):
    state = state_of(flow["out"])
    before = load(state["done"]["finetune"]["weights"])
    after = load(state["done"]["head"]["weights"])
    assert sorted(before) == sorted(after)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert changed == ["linear_pred.bias", "linear_pred.weight"]  # BN statistics of the rest did not move
    log = (flow["out"] / "4_head" / "record.txt").read_text()
    assert "trainable ['linear_pred']: 34 of" in log and "training 34 parameters" in log


def test_resume_in_the_middle_of_a_stage_equals_the_unbroken_run(flow, monkeypatch):
    run = flow["root"] / "broken_mid"
    original = Trainer.run_step

    def interrupt(self, batch):
        if self.save_dir.endswith("2_remove") and self.iter == 2:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(Trainer, "run_step", interrupt)
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--save_dir", run, "--allow_untrained_teacher") == 130
    assert list(state_of(run)["done"]) == ["distil"]
    assert os.path.isdir(run / "2_remove" / "iter_2")
    monkeypatch.setattr(Trainer, "run_step", original)
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--save_dir", run, "--allow_untrained_teacher") == 0
    log = (run / "pipeline.log").read_text()
    assert "stage 1 (distil): finished earlier" in log and f"resuming from {run / '2_remove' / 'iter_2'}" in log
    for stage, final in (("2_remove", "cut/model.pdparams"), ("3_finetune", "iter_4/model.pdparams"),
                         ("4_head", "iter_2/model.pdparams")):
        assert_same_weights(flow["out"] / stage / final, run / stage / final)


def test_resume_at_a_stage_boundary_starts_the_next_stage_from_the_handed_weights(flow, monkeypatch):
    run = flow["root"] / "broken_boundary"
    original = Trainer.run_step

    def interrupt(self, batch):
        if self.save_dir.endswith("3_finetune"):
            raise KeyboardInterrupt  # before the first step of stage 3: nothing of it is saved
        return original(self, batch)

    monkeypatch.setattr(Trainer, "run_step", interrupt)
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--save_dir", run, "--allow_untrained_teacher") == 130
    assert list(state_of(run)["done"]) == ["distil", "remove"]
    monkeypatch.setattr(Trainer, "run_step", original)
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--save_dir", run, "--allow_untrained_teacher") == 0
    assert_same_weights(flow["out"] / "3_finetune" / "iter_4" / "model.pdparams",
                        run / "3_finetune" / "iter_4" / "model.pdparams")
    assert_same_weights(flow["out"] / "4_head" / "iter_2" / "model.pdparams", run / "4_head" / "iter_2" / "model.pdparams")
    # a finished pipeline run again does nothing but report
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--save_dir", run, "--allow_untrained_teacher") == 0
    log = (run / "pipeline.log").read_text()
    assert log.count("stage 4 (head): finished earlier") == 1 and log.count("stage 3 (finetune): finished earlier") == 1
    assert not os.path.isdir(run / "4_head" / "iter_4")


def test_changed_finished_stage_is_refused(flow, tmp_path, capsys):
    changed = yaml.safe_load(open(flow["pipeline"]))
    changed["stages"][0]["iters"] = 5
    path = tmp_path / "changed.yml"
    path.write_text(yaml.safe_dump(changed))
    assert run_tool("distill_train", "--pipeline", path, "--save_dir", flow["out"], "--allow_untrained_teacher") == 2
    assert "finished stage 'distil' was defined otherwise" in capsys.readouterr().err


def _run_bad(flow, tmp_path, capsys, name, **overrides):
    pipeline = flow_pipeline(str(tmp_path), flow["configs"], **overrides)
    code = run_tool("distill_train", "--pipeline", pipeline, "--save_dir", tmp_path / name, "--allow_untrained_teacher")
    err = capsys.readouterr().err
    assert code == 2, err
    assert not os.path.isdir(tmp_path / name / "1_distil")  # refused before any training
    return err


def test_removal_index_out_of_range_names_the_valid_range(flow, tmp_path, capsys):
    err = _run_bad(flow, tmp_path, capsys, "range", **{"1__remove_layers": [1, 4]})
    assert "stage 2 (remove)" in err and "index 4 is out of range" in err and "valid indices are 0..3" in err


def test_unknown_block_list_names_the_valid_ones(flow, tmp_path, capsys):
    err = _run_bad(flow, tmp_path, capsys, "name", **{"1__block_list": "backbone.blocks3"})
    assert "'backbone.blocks3' does not exist" in err
    assert "backbone.block3 (4 blocks)" in err and "backbone.block1 (1 block)" in err


def test_removing_every_block_is_refused(flow, tmp_path, capsys):
    err = _run_bad(flow, tmp_path, capsys, "all", **{"1__remove_layers": [0, 1, 2, 3]})
    assert "removing all 4 blocks" in err and "keep at least one" in err


def test_previous_in_the_first_stage_is_refused(flow, tmp_path, capsys):
    err = _run_bad(flow, tmp_path, capsys, "first", **{"0__teacher": "previous"})
    assert "stage 1 (distil)" in err and "refers to `previous`, but this is the first stage" in err
    err = _run_bad(flow, tmp_path, capsys, "first_init", **{"0__init": "previous"})
    assert "first stage" in err


def test_other_pipeline_mistakes_are_explained(flow, tmp_path, capsys):
    err = _run_bad(flow, tmp_path, capsys, "later", **{"1__teacher": {"stage": "finetune"}})
    assert "stage 'finetune', which does not run before it" in err
    err = _run_bad(flow, tmp_path, capsys, "long", **{"1__remove_iters": 9})
    assert "remove_iters (9) exceeds the stage's iters (4)" in err
    err = _run_bad(flow, tmp_path, capsys, "typo", **{"1__remove_iter": 2})
    assert "'remove_iter' (did you mean 'remove_iters'?)" in err
    assert run_tool("distill_train", "--pipeline", flow["pipeline"], "--iters", 3) == 2
    assert "cannot be combined with --pipeline" in capsys.readouterr().err


def test_wrong_config_after_the_cut_is_a_clear_error(flow, tmp_path, capsys):
    pipeline = flow_pipeline(str(tmp_path), flow["configs"], **{"2__student": flow["configs"]["deep"]})
    code = run_tool("distill_train", "--pipeline", pipeline, "--save_dir", tmp_path / "run", "--allow_untrained_teacher")
    assert code == 2
    err = capsys.readouterr().err
    assert "stage 3 (finetune) starts from the cut weights of stage 2 (remove)" in err
    assert "backbone.block3: 4 -> 2 blocks" in err


def test_prune_tool_cuts_a_checkpoint_for_the_smaller_config(flow, tmp_path, capsys):
    uncut = flow["out"] / "2_remove" / "iter_4"
    out = tmp_path / "cut.pdparams"
    assert run_tool("prune_layers", "--config", flow["configs"]["deep"], "--model_path", uncut,
                      "--block_list", "backbone.block3", "--remove_layers", 1, 3, "--save_path", out,
                      "--verify_config", flow["configs"]["shallow"]) == 0
    printed = capsys.readouterr().out
    assert "backbone.block3: 4 -> 2 blocks (removed [1, 3]; kept 0->0, 2->1)" in printed
    assert "loads the cut weights strictly" in printed
    assert_same_weights(out, state_of(flow["out"])["done"]["remove"]["cut"]["weights"])
    assert run_tool("prune_layers", "--config", flow["configs"]["deep"], "--model_path", uncut,
                      "--remove_layers", "backbone.block3:0,1,2,3", "--save_path", tmp_path / "x") == 2
    assert "removing all 4 blocks" in capsys.readouterr().err


def test_pipeline_under_paddle_distributed_launch(flow, tmp_path):
    configs = flow["configs"]
    stages = {"defaults": {"seed": 0, "log_iters": 1, "save_interval": 100}, "stages": [
        {"name": "remove", "teacher": {"config": configs["deep"]}, "student": configs["deep"], "init": "teacher",
         "iters": 3, "remove_layers": {"backbone.block3": [1, 3]}, "remove_iters": 2,
         "distill_layers_student": [2], "distill_layers_teacher": [2], "distill_layers_blocks": "backbone.block3"},
        {"name": "finetune", "teacher": {"config": configs["deep"]}, "student": configs["shallow"], "init": "previous",
         "distill_layers": "previous", "iters": 2}]}
    pipeline = tmp_path / "dp.yml"
    pipeline.write_text(yaml.safe_dump(stages))
    out, logs = tmp_path / "run", tmp_path / "log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
           os.path.join(ROOT, SCRIPTS["distill_train"]), "--pipeline", str(pipeline), "--save_dir", str(out),
           "--allow_untrained_teacher"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    worker0 = (logs / "workerlog.0").read_text()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + worker0[-3000:] + \
        (logs / "workerlog.1").read_text()[-3000:]
    assert "batch 2 x 2 process(es)" in worker0 and "cut checked" in worker0
    assert "'backbone.block3.1' vs teacher 'backbone.block3.2'" in worker0
    assert list(state_of(out)["done"]) == ["remove", "finetune"]
    shallow = build_component(segformer(STUDENT_DEPTHS))
    assert sorted(load(out / "2_finetune" / "iter_2" / "model.pdparams")) == sorted(shallow.state_dict())
