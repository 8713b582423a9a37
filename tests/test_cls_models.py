"""Classification models: logits out, embedding and head reachable, projection sized and saved."""
import os

import numpy as np
import paddle
import pytest

from slim.distill import Distiller
from slim.distill.errors import ConfigError
from slim.apps.launch import load_task_config
from slim.tasks import detect_task_name
from slim.tasks.cls import Task, build_classifier, matches
from slim.tasks.cls.models import adapt_to_state
from tests.helpers.cli import ROOT

SMALL = [
    ({"type": "ConvNet", "channels": [4, 8], "num_classes": 5}, 8),
    ({"type": "ConvNet", "channels": [4], "pool": 3, "embedding_dim": 12, "num_classes": 5}, 12),
    ({"type": "SmallResNet", "depth": 8, "widths": [4, 8, 8], "num_classes": 5, "in_channels": 1}, 8),
    ({"type": "MLP", "hidden": [16, 8], "input_size": 28, "num_classes": 5}, 8),
]


@pytest.mark.parametrize("cfg,dim", SMALL)
def test_small_models_return_logits_and_expose_embedding_and_head(cfg, dim):
    model = build_classifier(cfg)
    model.eval()
    x = paddle.randn([3, cfg.get("in_channels", 3), 28, 28])
    logits = model(x)
    emb = model.embed(x)
    assert logits.shape == [3, 5] and emb.shape == [3, dim] and model.head_in_dim == dim
    np.testing.assert_allclose(model.head(emb).numpy(), logits.numpy(), rtol=1e-6)
    assert isinstance(model.head, paddle.nn.Linear) and "embedding" in dict(model.named_sublayers())


def test_paddle_vision_models_are_wrapped():
    model = build_classifier({"type": "MobileNetV3Small", "scale": 0.35, "num_classes": 7, "embedding_dim": 24})
    model.eval()
    assert model(paddle.randn([2, 3, 32, 32])).shape == [2, 7] and model.embed(paddle.randn([1, 3, 32, 32])).shape == [1, 24]
    resnet = build_classifier({"type": "ResNet18", "small_input": True, "in_channels": 1, "num_classes": 3})
    assert resnet.feat_dim == 512
    assert resnet.backbone.net.conv1._stride == [1, 1]
    resnet.eval()
    assert resnet(paddle.randn([1, 1, 28, 28])).shape == [1, 3]


def test_model_config_errors():
    with pytest.raises(ConfigError, match="num_classes is missing"):
        build_classifier({"type": "ConvNet"})
    with pytest.raises(ConfigError, match="Unknown classification model type 'Conv'"):
        build_classifier({"type": "Conv", "num_classes": 2})
    with pytest.raises(ConfigError, match=r"Could not build classification model type ConvNet from \['widths'\]"):
        build_classifier({"type": "ConvNet", "num_classes": 2, "widths": [3]})
    with pytest.raises(ConfigError, match="depth must be 6n\\+2"):
        build_classifier({"type": "SmallResNet", "depth": 10, "num_classes": 2})


def test_task_detection():
    assert matches({"model": {"type": "ConvNet"}}) and matches({"task": "cls"})
    assert not matches({"model": {"type": "DeepLabV3P"}})
    assert detect_task_name({"model": {"type": "SmallResNet", "num_classes": 3}}) == "cls"


def test_embedding_projection_is_part_of_the_model_and_sized_from_teacher_or_weights(tmp_path):
    fixed = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 3}, projection=16)
    assert fixed.head_in_dim == 16 and "projection.weight" in fixed.state_dict()
    lazy = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 3}, projection=True)
    assert lazy.projection is None and lazy.head_in_dim == 4  # sized later
    adapt_to_state(lazy, fixed.state_dict())
    assert lazy.head_in_dim == 16
    paddle.save(fixed.state_dict(), str(tmp_path / "w.pdparams"))
    again = Task().build_model({"model": {"type": "ConvNet", "channels": [4], "num_classes": 3},
                                "embedding_projection": True})
    Task().load_weights(again, str(tmp_path / "w.pdparams"))
    x = paddle.randn([2, 3, 16, 16])
    fixed.eval(), again.eval()
    np.testing.assert_allclose(again(x).numpy(), fixed(x).numpy(), rtol=1e-6)
    plain = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 3})
    with pytest.raises(ConfigError, match=r"not in the model \(\d+\): projection"):
        Task().load_weights(plain, str(tmp_path / "w.pdparams"))  # not asked for: a clear mismatch


def test_prepare_pair_copies_and_freezes_the_teacher_head():
    task = Task()
    teacher = build_classifier({"type": "ConvNet", "channels": [8], "embedding_dim": 16, "num_classes": 4})
    student = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 4}, projection=True)
    notes = []
    task.prepare_pair(student, teacher, {"head_from_teacher": True, "embedding_projection": True}, log=notes.append)
    assert student.projection.weight.shape == [4, 16]
    np.testing.assert_array_equal(student.head.weight.numpy(), teacher.head.weight.numpy())
    assert all(p.stop_gradient for p in student.head.parameters())
    trainable = [p for n, p in student.backbone.named_parameters() if not n.endswith(("_mean", "_variance"))]
    assert trainable and not any(p.stop_gradient for p in trainable + list(student.projection.parameters()))
    assert any("frozen" in n for n in notes) and any("projected" in n for n in notes)


def test_width_mismatch_without_projection_names_both_widths_and_the_fixes():
    teacher = build_classifier({"type": "ConvNet", "channels": [8], "embedding_dim": 16, "num_classes": 4})
    student = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 4})
    with pytest.raises(ConfigError) as e:
        Task().prepare_pair(student, teacher, {"head_from_teacher": True})
    msg = str(e.value)
    assert "4-d" in msg and "16-d" in msg and "embedding_dim: 16" in msg and "embedding_projection: true" in msg
    other = build_classifier({"type": "ConvNet", "channels": [4], "embedding_dim": 16, "num_classes": 5})
    with pytest.raises(ConfigError, match="teacher classifies 4 classes and the student 5"):
        Task().prepare_pair(other, teacher, {"head_from_teacher": True})


def test_embedding_feature_pair_works_through_hooks_and_a_linear_connector():
    teacher = build_classifier({"type": "ConvNet", "channels": [8], "embedding_dim": 16, "num_classes": 4})
    student = build_classifier({"type": "ConvNet", "channels": [4], "num_classes": 4})
    x = paddle.randn([2, 3, 16, 16])
    pairs = [{"name": "emb", "student": "embedding", "teacher": "embedding", "loss": "L2Loss",
              "align": {"type": "linear"}}]
    with Distiller(student, teacher, pairs) as d:
        d.build(x)
        out = d(x)
        assert out.student_features["emb"][0].shape == [2, 16]
        teacher.eval()
        np.testing.assert_allclose(out.teacher_features["emb"][0].numpy(), teacher.embed(x).numpy(), rtol=1e-5)
        assert float(out.losses["emb"]) > 0


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "configs", "cls")) if n.endswith(".yml")))
def test_shipped_configs_load_and_build(name):
    task, cfg = load_task_config(os.path.join(ROOT, "configs", "cls", name))
    assert task.name == "cls" and cfg["model"]["num_classes"] == 10
    model = task.build_model(cfg)
    model.eval()
    with paddle.no_grad():
        assert model(*task.example_inputs(cfg, [1, cfg["model"].get("in_channels", 3), 28, 28])).shape == [1, 10]


def test_run_folder_name_tells_models_apart():
    """Two ConvNets that differ only in convs per stage must not share a run folder (resume would mix them)."""
    one = {"model": {"type": "ConvNet", "channels": [16, 32], "embedding_dim": 64}}
    two = {"model": dict(one["model"], convs_per_stage=2)}
    assert Task().run_name(one) == "convnet_16-32_e64"
    assert Task().run_name(two) == "convnet_16-32_x2_e64"
