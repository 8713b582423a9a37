"""QAT through the training commands on real small models: classification (tiny MNIST ConvNets) alone, with EMA
and exact resume (weights, scales and observer state bit for bit), distilled from a cached fp32 teacher, and from
its own fp32 copy (--teacher self) for every task (the default terms logged); the errors a user meets (exit 2)."""
import json

import numpy as np
import paddle
import pytest
import yaml

from slim.quant import state_is_quantized
from tests.helpers.cli import logged_losses, run_tool
from tests.helpers.cls_fixtures import make_tiny_cls
from tests.helpers.resume import run_interrupted

PACT_Q = {"quant": {"weight_quantize_type": "channel_wise_abs_max", "use_pact": True, "moving_rate": 0.9}}


def write(path, data):
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return str(path)


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant_cls")
    paths = make_tiny_cls(str(root))
    paths["root"] = root
    paths["q"] = write(root / "q.yml", PACT_Q)
    fp32 = root / "fp32"
    assert run_tool("train", "-c", paths["teacher"], "--iters", 4, "--seed", 0, "--save_dir", fp32) == 0
    paths["fp32"] = str(fp32 / "iter_4" / "model.pdparams")
    return paths


def qat_args(cls, *extra):
    return ["-c", cls["teacher"], "--quant_config", cls["q"], "--init_weights", cls["fp32"], "--iters", 4,
            "--save_interval", 2, "--log_iters", 1, "--seed", 0, "-o", "ema={decay: 0.8, type: normal}", *extra]


def test_qat_with_ema_trains_and_resumes_exactly(cls):
    root = cls["root"]
    assert run_tool("train", *qat_args(cls, "--save_dir", root / "whole")) == 0
    assert run_interrupted(3, "train", *qat_args(cls, "--save_dir", root / "resumed")) == 130
    assert run_tool("train", *qat_args(cls, "--save_dir", root / "resumed", "--resume_model", "auto")) == 0
    for name in ("model.pdparams", "ema.pdparams"):
        a, b = (paddle.load(str(root / run / "iter_4" / name)) for run in ("whole", "resumed"))
        flat = (lambda s: s) if name == "model.pdparams" else (lambda s: dict(s["accumulator"]))
        a, b = flat(a), flat(b)
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=f"{name} {key}")
    state = paddle.load(str(root / "whole" / "iter_4" / "ema.pdparams"))["training_weights"]
    scales = [k for k in state if k.endswith("_fake_quant_input._scale")]
    assert scales and state_is_quantized(state) and any(k.endswith("_act_preprocess.alpha") for k in state)
    assert all(float(state[k].numpy()[0]) != pytest.approx(0.001) for k in scales)  # the observers ran
    losses = logged_losses(root / "whole")
    assert len(losses) == 4 and all(np.isfinite(v["Train/loss"]) for _, v in losses)
    assert logged_losses(root / "resumed")[-1] == losses[-1]
    record = (root / "whole" / "record.txt").read_text()
    assert "PACT on the activations" in record and "layer(s) quantised" in record and "EMA" in record


def test_eval_of_a_qat_checkpoint_needs_the_quant_config(cls, capsys):
    run = cls["root"] / "whole"
    out = cls["root"] / "eval.json"
    assert run_tool("eval", "-c", cls["teacher"], "--model_path", run / "iter_4", "--quant_config", cls["q"],
                    "--save_json", out) == 0
    metrics = json.loads(out.read_text())
    assert 0.0 <= metrics["top1"] <= 1.0
    capsys.readouterr()
    assert run_tool("eval", "-c", cls["teacher"], "--model_path", run / "iter_4") == 2
    assert "--quant_config" in capsys.readouterr().err
    # an fp32 checkpoint with quant settings: untrained scales
    assert run_tool("eval", "-c", cls["teacher"], "--model_path", cls["fp32"], "--quant_config", cls["q"]) == 2
    assert "fp32 model" in capsys.readouterr().err


def test_wrong_resumes_starts_precisions_and_quant_files_are_clear_errors(cls, capsys, tmp_path):
    run = cls["root"] / "whole"
    cases = [
        (["-c", cls["teacher"], "--iters", 6, "--save_dir", run, "--resume_model", "auto"], "--quant_config"),
        (["-c", cls["teacher"], "--iters", 2, "--init_weights", run / "iter_4" / "ema.pdparams",
          "--save_dir", tmp_path / "a"], "--quant_config"),
        (qat_args(cls, "--precision", "fp16", "--save_dir", tmp_path / "b"), "--precision fp16"),
        (["-c", cls["teacher"], "--iters", 2, "--quant_config", write(tmp_path / "bad.yml", {"quant": {"weight_bits": 9.5}}),
          "--save_dir", tmp_path / "c"], "weight_bits"),
        (["-c", cls["teacher"], "--iters", 2, "--quant_config", write(tmp_path / "extra.yml", dict(PACT_Q, iters=3)),
          "--save_dir", tmp_path / "d"], "only the `quant:` section"),
        (["-c", cls["teacher"], "--iters", 2, "--quant_config", write(tmp_path / "none.yml", {"iters": 3}),
          "--save_dir", tmp_path / "e"], "no `quant:` section"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_tool("train", *args) == 2, message
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yml", "extra.yml", "none.yml"]  # nothing written
    # and an fp32 run's checkpoint cannot be continued by a QAT run
    capsys.readouterr()
    assert run_tool("train", *qat_args(cls, "--save_dir", cls["root"] / "fp32", "--resume_model", "auto")) == 2
    assert "fp32 run" in capsys.readouterr().err


def test_qat_student_distils_from_a_cached_fp32_teacher(cls):
    root = cls["root"]
    args = ["--teacher_config", cls["teacher"], "--student_config", cls["student"], "--teacher_pretrained", cls["fp32"],
            "--quant_config", cls["q"], "--iters", 3, "--log_iters", 1, "--seed", 0,
            "--teacher_cache", root / "cache", "--teacher_cache_dtype", "float32"]
    assert run_tool("distill_train", *args, "--save_dir", root / "fill") == 0
    assert run_tool("distill_train", *args, "--save_dir", root / "read") == 0
    assert logged_losses(root / "read") == logged_losses(root / "fill") != []
    assert "distill_KLLoss" in json.dumps(logged_losses(root / "fill"))
    assert "0 computed by the teacher" in (root / "read" / "record.txt").read_text()
    assert state_is_quantized(paddle.load(str(root / "read" / "iter_3" / "model.pdparams")))


def test_teacher_self_distils_the_qat_classifier_from_its_fp32_copy(cls):
    root = cls["root"]
    assert run_tool("distill_train", "-c", cls["teacher"], "--teacher", "self", "--quant_config", cls["q"],
                    "--init_weights", cls["fp32"], "--iters", 2, "--log_iters", 1, "--seed", 0,
                    "--save_dir", root / "self") == 0
    record = (root / "self" / "record.txt").read_text()
    assert "--teacher self and no distillation terms given: KLLoss" in record
    assert "frozen fp32 copy of the student's starting weights" in record
    losses = logged_losses(root / "self")
    assert all("Train/distill_KLLoss" in v and np.isfinite(v["Train/distill_KLLoss"]) for _, v in losses)
    # the copy is the fp32 start: at the first step the only difference is the fake quantisation, a small KL
    assert 0 < losses[0][1]["Train/distill_KLLoss"] < 0.5


def test_teacher_self_default_terms_for_segmentation_and_detection(tmp_path):
    from tests.helpers.det_fixtures import make_tiny_det
    from tests.helpers.seg_fixtures import make_tiny_seg
    q = write(tmp_path / "q.yml", {"quant": {}})
    seg = make_tiny_seg(str(tmp_path / "seg"))
    assert run_tool("distill_train", "-c", seg["teacher"], "--teacher", "self", "--quant_config", q, "--iters", 1,
                    "--seed", 0, "--save_dir", tmp_path / "seg_run") == 0
    record = (tmp_path / "seg_run" / "record.txt").read_text()
    assert "KLLoss (temperature 1) between the QAT student's logits (the model output[0])" in record
    det = make_tiny_det(str(tmp_path / "det"))
    teacher_cfg = yaml.safe_load(open(det["teacher"]))
    teacher_cfg["teacher"] = "self"  # the config key, as the flag
    assert run_tool("train", "-c", write(tmp_path / "det" / "self.yml", teacher_cfg), "--quant_config", q,
                    "--iters", 1, "--seed", 0, "--save_dir", tmp_path / "det_run") == 0
    record = (tmp_path / "det_run" / "record.txt").read_text()
    assert "--teacher self: no distillation terms given" in record and "L2Loss on the head outputs" in record
    assert "distill pair 'l2_out2'" in record


def test_pipeline_stages_go_from_fp32_to_qat_distilled_to_qat_continued(cls):
    root = cls["root"]
    pipe = write(root / "pipe.yml", {"save_dir": str(root / "pipe"), "stages": [
        {"name": "fp32", "student": cls["teacher"], "iters": 2},
        {"name": "qat", "teacher": {"stage": "fp32"}, "student": cls["teacher"], "init": "previous",
         "opts": ["quant={use_pact: true}"], "distill_loss": {"types": [{"type": "KLLoss"}], "coef": [1]}, "iters": 2},
        {"name": "qat_more", "student": cls["teacher"], "init": "previous", "opts": ["quant={use_pact: true}"],
         "iters": 2}]})
    assert run_tool("distill_train", "--pipeline", pipe, "--seed", 0, "--log_iters", 1) == 0
    qat, more = ((root / "pipe" / d / "record.txt").read_text() for d in ("2_qat", "3_qat_more"))
    assert "layer(s) quantised" in qat and "distill_KLLoss" in qat
    assert "the starting weights are a QAT checkpoint: the student is quantised before they load" in more
    assert "loaded 50/50 tensors" in more  # every weight, scale and observer state of the QAT stage
    assert not state_is_quantized(paddle.load(str(root / "pipe" / "1_fp32" / "iter_2" / "model.pdparams")))
