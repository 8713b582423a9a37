"""DeiT's distillation token (slim/distill/distill_token.py, slim/tasks/cls/vit.py): the hard and soft token terms
against NumPy, the class head trained on the labels and the distillation head on the teacher (gradients), the
DeiT model equal to PaddleClas's DistilledVisionTransformer, and a CNN teacher -> DeiT student run with
distill_train.py on real MNIST."""
import os

import numpy as np
import paddle
import pytest

from slim.distill import Distiller, build_loss
from slim.distill.distill_token import distill_token_pairs, parse_distill_token
from slim.distill.errors import ConfigError
from slim.tasks.cls.task import Task
from slim.tasks.cls.vit import TwoHeads
from tests.helpers.cli import run_tool
from tests.helpers.cls_fixtures import TEACHER_MODEL, base_config, write_yaml

DEIT = {"type": "DeiT", "input_size": 28, "patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2,
        "in_channels": 1, "num_classes": 10}


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_hard_distillation_is_ce_with_the_teachers_argmax():
    rng = np.random.RandomState(0)
    s, t = rng.randn(5, 7).astype("float32"), rng.randn(5, 7).astype("float32")
    got = float(build_loss("HardDistillationLoss")(paddle.to_tensor(s), paddle.to_tensor(t)))
    want = -np_log_softmax(s.astype("float64"))[np.arange(5), t.argmax(axis=1)].mean()
    assert got == pytest.approx(want, rel=1e-6)


def test_distill_token_settings_and_their_errors():
    assert parse_distill_token("hard") == {"type": "hard", "tau": 1.0, "weight": 1.0, "head": "head_dist"}
    assert parse_distill_token({"type": "soft", "tau": 3, "weight": 0.5})["tau"] == 3.0
    (pair,) = distill_token_pairs({"type": "soft", "tau": 3}, Task().logits_ref({"model": DEIT}))
    assert pair.loss == {"type": "KLLoss", "temperature": 3.0} and pair.student[0].layer == "head_dist"
    assert distill_token_pairs(None, None) == []
    with pytest.raises(ConfigError, match="hard, soft|`hard`, `soft`"):
        parse_distill_token("medium")
    with pytest.raises(ConfigError, match="no temperature"):
        parse_distill_token({"type": "hard", "tau": 2})
    with pytest.raises(ConfigError, match="unknown key"):
        parse_distill_token({"type": "soft", "temp": 2})


def test_the_deit_model_is_paddleclas_distilled_vision_transformer():
    from slim.tasks.ppcls.arch import import_ppcls
    import_ppcls()
    from ppcls.arch.backbone.model_zoo.distilled_vision_transformer import DistilledVisionTransformer
    ours = Task().build_model({"model": DEIT})
    theirs = DistilledVisionTransformer(img_size=28, patch_size=7, in_chans=1, class_num=10, embed_dim=16, depth=1,
                                        num_heads=2, mlp_ratio=2.0, qkv_bias=True, epsilon=1e-6)
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in ours.state_dict().items()}
    assert sorted(state) == sorted(theirs.state_dict())
    theirs.set_state_dict(state)
    ours.eval(), theirs.eval()
    x = paddle.randn([3, 1, 28, 28])
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-6)  # DeiT's average
    ours.train()
    heads = ours(x)
    assert isinstance(heads, TwoHeads)
    np.testing.assert_allclose(((heads.cls + heads.dist) / 2).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("token", ["hard", {"type": "soft", "tau": 2.0}])
def test_class_head_learns_the_labels_and_the_distillation_head_the_teacher(token):
    task = Task()
    cfg = {"model": DEIT, "distill_token": token}
    student = task.build_model(cfg)
    teacher = task.build_model({"model": TEACHER_MODEL})
    distiller = Distiller(student, teacher, distill_token_pairs(token, task.logits_ref(cfg)))
    distiller.train()
    x, y = paddle.randn([4, 1, 28, 28]), paddle.to_tensor([1, 2, 3, 4])
    out = distiller(x, label=y)
    ce = task.build_task_loss(cfg)(out.student_out, {"label": y})["CrossEntropyLoss"]
    cls_logits, dist_logits = (t.numpy().astype("float64") for t in out.student_out)
    teacher_logits = teacher(x).numpy().astype("float64")
    assert float(ce) == pytest.approx(-np_log_softmax(cls_logits)[np.arange(4), y.numpy()].mean(), rel=1e-5)
    name = f"distill_token_{parse_distill_token(token)['type']}"
    if token == "hard":
        want = -np_log_softmax(dist_logits)[np.arange(4), teacher_logits.argmax(axis=1)].mean()
    else:
        pt, ls = np.exp(np_log_softmax(teacher_logits / 2)), np_log_softmax(dist_logits / 2)
        want = 4 * (pt * (np.log(pt) - ls)).sum(axis=1).mean()
    assert float(out.losses[name]) == pytest.approx(want, rel=1e-5)
    # each head gets the gradient of its own term only
    ce.backward(retain_graph=True)
    assert float(student.head.weight.grad.abs().sum()) > 0
    assert student.head_dist.weight.grad is None or float(student.head_dist.weight.grad.abs().sum()) == 0
    student.clear_gradients()
    out.losses[name].backward()
    assert float(student.head_dist.weight.grad.abs().sum()) > 0
    assert student.head.weight.grad is None or float(student.head.weight.grad.abs().sum()) == 0


def test_a_deit_trained_alone_learns_both_heads_on_the_labels_as_paddleclas_does():
    task = Task()
    heads = TwoHeads(paddle.to_tensor([[2.0, 0.0]]), paddle.to_tensor([[0.0, 2.0]]))
    y = paddle.to_tensor([0])
    alone = float(task.build_task_loss({"model": DEIT})(heads, {"label": y})["CrossEntropyLoss"])
    assert alone == pytest.approx(np.log(2.0), rel=1e-6)  # CE of the average (1, 1): both classes equal
    token = float(task.build_task_loss({"model": DEIT, "distill_token": "hard"})(heads, {"label": y})[
        "CrossEntropyLoss"])
    assert token == pytest.approx(-np_log_softmax(np.array([[2.0, 0.0]]))[0, 0], rel=1e-6)


def test_cnn_teacher_to_deit_student_with_distill_train_on_mnist(tmp_path):
    from slim.datasets import mnist
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=4)
    base = base_config(data, iters=3, batch_size=8)
    teacher_cfg = write_yaml(str(tmp_path / "teacher.yml"), dict(base, model=TEACHER_MODEL))
    student_cfg = write_yaml(str(tmp_path / "deit.yml"), dict(base, model=DEIT, distill_token={"type": "soft", "tau": 2}))
    assert run_tool("train", "--config", teacher_cfg, "--iters", 2, "--seed", 0,
                    "--save_dir", tmp_path / "teacher") == 0
    out = tmp_path / "deit"
    assert run_tool("distill_train", "-t", teacher_cfg, "-c", student_cfg, "--teacher_pretrained",
                    tmp_path / "teacher" / "iter_2" / "model.pdparams", "--iters", 3, "--log_iters", 1,
                    "--do_eval", "--eval_interval", 3, "--seed", 0, "--save_dir", out) == 0
    log = open(out / "record.txt").read()
    assert "distill pair 'distill_token_soft' (student 'head_dist'" in log
    assert "CrossEntropyLoss:" in log and "distill_token_soft:" in log and "[EVAL] #Images: 40 top1:" in log
    assert os.path.isfile(out / "iter_3" / "model.pdparams")
