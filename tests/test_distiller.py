import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
import yaml

from slim.distill import (AdaptorBase, ConfigError, Distiller, LayerNotFoundError, NonFiniteLossError,
                          ShapeMismatchError, UnknownLossError, format_layers, list_layers)
from tests.helpers.models import TutorialModel, TwoStage


class StudentAdaptor(AdaptorBase):
    def mapping_layers(self):
        mapping_layers = {"hidden_0": "conv2"}
        if self.add_tensor:
            mapping_layers["hidden_1"] = self.model.reshape_out
        return mapping_layers


class TeatherAdaptor(StudentAdaptor):  # the tutorial's spelling
    pass


TUTORIAL_CONFIG = [
    {"feature_type": "hidden", "s_feature_idx": 0, "t_feature_idx": 0,
     "loss_function": "SegChannelwiseLoss", "weight": 1.0},
    {"feature_type": "hidden", "s_feature_idx": 1, "t_feature_idx": 1, "loss_function": "L2Loss",
     "weight": 0.5},
]


def _np_cwd(s, t, tau=1.0):
    n, c = s.shape[:2]
    s = s.reshape(n * c, -1) / tau
    t = t.reshape(n * c, -1) / tau
    ls = s - s.max(1, keepdims=True)
    ls = ls - np.log(np.exp(ls).sum(1, keepdims=True))
    lt = t - t.max(1, keepdims=True)
    lt = lt - np.log(np.exp(lt).sum(1, keepdims=True))
    return tau ** 2 * (np.exp(lt) * (lt - ls)).sum() / (n * c)


def _tutorial_pair():
    paddle.seed(1)
    student = TutorialModel()
    paddle.seed(2)
    teacher = TutorialModel()
    return student, teacher


def test_tutorial_model_distils_with_adaptors_and_teacher_gets_no_gradient():
    student, teacher = _tutorial_pair()
    distiller = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, TeatherAdaptor)
    x = paddle.randn([2, 3, 32, 32])
    out = distiller(x)
    assert list(out.losses) == ["SegChannelwiseLoss:hidden_0", "L2Loss:hidden_1"]

    # The terms equal the formulas computed independently from the two models' tensors.
    with paddle.no_grad():
        s2 = student.conv2(student.conv1(x)).numpy().astype("float64")
        t2 = teacher.conv2(teacher.conv1(x)).numpy().astype("float64")
        student(x), teacher(x)
        s_flat, t_flat = student.reshape_out.numpy(), teacher.reshape_out.numpy()
    np.testing.assert_allclose(float(out.losses["SegChannelwiseLoss:hidden_0"]), _np_cwd(s2, t2), rtol=1e-4)
    np.testing.assert_allclose(float(out.losses["L2Loss:hidden_1"]), 0.5 * ((s_flat - t_flat) ** 2).mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(float(out.loss), float(sum(out.losses.values())), rtol=1e-6)

    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.stop_gradient for p in teacher.parameters())
    assert not teacher.training
    assert out.teacher_out.stop_gradient  # no teacher graph kept for backward
    assert student.conv2.weight.grad is not None and float(student.conv2.weight.grad.abs().sum()) > 0


def test_training_lowers_the_distillation_loss():
    student, teacher = _tutorial_pair()
    distiller = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)
    opt = paddle.optimizer.Adam(learning_rate=1e-2, parameters=distiller.parameters())
    x = paddle.randn([4, 3, 32, 32])
    first = None
    for _ in range(30):
        out = distiller(x)
        out.loss.backward()
        opt.step()
        opt.clear_grad()
        first = first if first is not None else float(out.loss)
    assert float(out.loss) < 0.5 * first


def test_yaml_pairs_equal_tutorial_pairs():
    student, teacher = _tutorial_pair()
    x = paddle.randn([2, 3, 32, 32])
    a = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)(x)
    a_terms = [float(v) for v in a.losses.values()]
    yaml_pairs = yaml.safe_load("""
    distill:
      - {student: conv2, teacher: conv2, loss: SegChannelwiseLoss}
      - {student: hidden_1, teacher: hidden_1, loss: L2Loss, weight: 0.5}
    """)
    b = Distiller(student, teacher, yaml_pairs, StudentAdaptor, StudentAdaptor)(x)
    np.testing.assert_allclose([float(v) for v in b.losses.values()], a_terms, rtol=1e-6)


def test_paddleslim_distill_config_is_accepted_as_is(tmp_path):
    student, teacher = TwoStage(8), TwoStage(8)
    x = paddle.randn([2, 3, 16, 16])
    slim_cfg = [{"DistillConfig": [{
        "loss_function": "MSELoss", "model_name_pairs": [["student_0", "teacher_0"]], "weight": 2.0,
        "layers": [{"layers_name": ["stage1", "stage1"], "io": ["output", "output"], "idx": [None, None]},
                   {"layers_name": ["split", "split"], "io": ["output", "input"], "idx": [1, 0]}]}]}]
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(slim_cfg))
    out = Distiller(student, teacher, str(path))(x)
    assert len(out.losses) == 2
    with paddle.no_grad():
        s = student.stage1(student.stem(x)).numpy()
        t = teacher.stage1(teacher.stem(x)).numpy()
    terms = list(out.losses.values())
    np.testing.assert_allclose(float(terms[0]), 2.0 * ((s - t) ** 2).mean(), rtol=1e-5)
    # student split output[1] = 0.5 * s; teacher split input[0] = t
    np.testing.assert_allclose(float(terms[1]), 2.0 * ((0.5 * s - t) ** 2).mean(), rtol=1e-5)


def test_connector_infers_channels_trains_and_stays_out_of_student_state():
    student, teacher = TwoStage(4), TwoStage(8)
    pairs = [{"student": "stage1", "teacher": "stage1", "loss": "L2Loss", "align": {"type": "1x1conv"}}]
    distiller = Distiller(student, teacher, pairs)
    x = paddle.randn([2, 3, 16, 16])
    with pytest.raises(ConfigError, match="build"):
        distiller.parameters()
    distiller.build(x)
    weights = distiller.connector_state_dict()
    assert [list(v.shape) for k, v in weights.items() if k.endswith("weight")] == [[16, 8, 1, 1]]
    assert not any("pair" in k for k in student.state_dict())
    n_student = len(list(student.parameters()))
    assert len(distiller.parameters()) == n_student + 2
    opt = paddle.optimizer.SGD(learning_rate=0.1, parameters=distiller.parameters())
    before = {k: v.numpy().copy() for k, v in distiller.connector_state_dict().items()}
    out = distiller(x)
    out.loss.backward()
    opt.step()
    after = distiller.connector_state_dict()
    assert any(not np.allclose(before[k], after[k].numpy()) for k in before)


def test_connector_with_given_channels_needs_no_build_and_checks_them():
    student, teacher = TwoStage(4), TwoStage(8)
    pairs = [{"student": "stage1", "teacher": "stage1", "loss": "L2Loss",
              "align": {"type": "1x1conv", "in_channels": 8, "out_channels": 16}}]
    distiller = Distiller(student, teacher, pairs)
    assert len(distiller.parameters()) == len(list(student.parameters())) + 2  # no build() needed
    out = distiller(paddle.randn([2, 3, 16, 16]))
    assert out.student_features[list(out.losses)[0]][0].shape[1] == 16
    wrong = [dict(pairs[0], align={"type": "1x1conv", "in_channels": 6, "out_channels": 16})]
    with pytest.raises(ShapeMismatchError, match=r"expects 6 student channels.*\[2, 8, 8, 8\].*in_channels"):
        Distiller(TwoStage(4), TwoStage(8), wrong)(paddle.randn([2, 3, 16, 16]))


def test_build_does_not_update_student_batchnorm_statistics():
    student, teacher = TwoStage(4), TwoStage(8)
    distiller = Distiller(student, teacher, [{"student": "stage1", "teacher": "stage1", "loss": "l2",
                                              "align": "1x1conv"}])
    mean_before = student.stem[1]._mean.numpy().copy()
    distiller.build(paddle.randn([2, 3, 16, 16]) + 3)
    np.testing.assert_array_equal(student.stem[1]._mean.numpy(), mean_before)
    assert student.training


def test_resize_aligns_spatial_size_on_the_named_side():
    # student stem: 16 channels at 16x16; teacher stage1: 16 channels at 8x8
    student, teacher = TwoStage(16), TwoStage(8)
    x = paddle.randn([2, 3, 16, 16])
    for side, expected_shape in (("teacher", [2, 16, 16, 16]), ("student", [2, 16, 8, 8])):
        pairs = [{"student": "stem", "teacher": "stage1", "loss": "L2Loss", "align": {"resize": side}}]
        out = Distiller(student, teacher, pairs)(x)
        with paddle.no_grad():  # the teacher is in eval mode now
            s = student.stem(x)
            t = teacher.stage1(teacher.stem(x))
        name = next(iter(out.losses))
        assert list(out.teacher_features[name][0].shape) == expected_shape
        assert list(out.student_features[name][0].shape) == expected_shape
        if side == "teacher":
            ref = ((s - F.interpolate(t, size=[16, 16], mode="bilinear")) ** 2).mean()
        else:
            ref = ((F.interpolate(s, size=[8, 8], mode="bilinear") - t) ** 2).mean()
        np.testing.assert_allclose(float(out.loss), float(ref), rtol=1e-5)
    with pytest.raises(ShapeMismatchError, match="resize"):
        Distiller(student, teacher, [{"student": "stem", "teacher": "stage1", "loss": "L2Loss"}])(x)


def test_resize_cannot_fix_channels_but_at_needs_no_connector():
    student, teacher = TwoStage(8), TwoStage(8)
    x = paddle.randn([2, 3, 16, 16])
    # stage1: 16 channels at 8x8; stem.0: 8 channels at 16x16 -> channels still differ
    pairs = [{"student": "stage1", "teacher": "stem.0", "loss": "L2Loss",
              "align": {"type": "resize", "resize": "student"}}]
    with pytest.raises(ShapeMismatchError, match="1x1conv"):
        Distiller(student, teacher, pairs)(x)
    pairs = [{"student": "stem.0", "teacher": "stage1.0", "loss": "ATLoss"}]
    out = Distiller(student, teacher, pairs)(x)
    assert out.loss.shape == [] and float(out.loss) > 0


def test_input_capture_and_tuple_index():
    student, teacher = TwoStage(8), TwoStage(8)
    x = paddle.randn([1, 3, 16, 16])
    pairs = [{"student": {"layer": "head", "io": "input"}, "teacher": {"layer": "split", "idx": 0},
              "loss": "L2Loss"}]
    out = Distiller(student, teacher, pairs)(x)
    with paddle.no_grad():
        s = student.stage1(student.stem(x)).numpy()
        t = teacher.stage1(teacher.stem(x)).numpy()
    np.testing.assert_allclose(float(out.loss), ((s - 0.5 * t) ** 2).mean(), rtol=1e-5)


def test_tuple_output_without_idx_is_a_clear_error():
    student, teacher = TwoStage(8), TwoStage(8)
    with pytest.raises(ConfigError, match="idx"):
        Distiller(student, teacher, [{"student": "split", "teacher": "split", "loss": "L2Loss"}])(
            paddle.randn([1, 3, 16, 16]))


def test_model_output_reference():
    student, teacher = TwoStage(8), TwoStage(8)
    x = paddle.randn([2, 3, 16, 16])
    pairs = [{"student": {"layer": "$output", "idx": 0}, "teacher": {"layer": "$output", "idx": 0},
              "loss": {"type": "KLLoss", "temperature": 2.0}}]
    out = Distiller(student, teacher, pairs)(x)
    s, t = out.student_out[0].numpy().astype("float64"), out.teacher_out[0].numpy().astype("float64")

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    ls, lt = log_softmax(s / 2), log_softmax(t / 2)
    expected = 4 * (np.exp(lt) * (lt - ls)).sum(1).mean()
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-4)


def test_unknown_layer_name_lists_closest_names_and_how_to_list_all():
    student, teacher = TutorialModel(), TutorialModel()
    with pytest.raises(LayerNotFoundError) as err:
        Distiller(student, teacher, [{"student": "conv_2", "teacher": "conv2", "loss": "L2Loss"}])
    msg = str(err.value)
    assert "'conv_2'" in msg and "conv2" in msg and "list_layers" in msg


def test_mapping_key_must_be_type_underscore_index():
    class BadAdaptor(AdaptorBase):
        def mapping_layers(self):
            return {"hidden": "conv2"}

    student, teacher = TutorialModel(), TutorialModel()
    with pytest.raises(ConfigError, match="<feature_type>_<idx>"):
        Distiller(student, teacher, TUTORIAL_CONFIG[:1], BadAdaptor, BadAdaptor)


def test_unknown_loss_lists_known_losses():
    student, teacher = TutorialModel(), TutorialModel()
    with pytest.raises(UnknownLossError) as err:
        Distiller(student, teacher, [{"student": "conv2", "teacher": "conv2", "loss": "KLDivLoss"}])
    assert "KLLoss" in str(err.value) and "SegChannelwiseLoss" in str(err.value)


def test_shape_mismatch_without_align_names_both_shapes_and_the_fix():
    student, teacher = TwoStage(4), TwoStage(8)
    distiller = Distiller(student, teacher, [{"student": "stage1", "teacher": "stage1", "loss": "cwd"}])
    with pytest.raises(ShapeMismatchError) as err:
        distiller(paddle.randn([2, 3, 16, 16]))
    msg = str(err.value)
    assert "[2, 8, 8, 8]" in msg and "[2, 16, 8, 8]" in msg and "align: {type: 1x1conv}" in msg


def test_fsp_pair_with_mismatched_channels_is_refused():
    student, teacher = TwoStage(4), TwoStage(8)
    pairs = [{"student": ["stem", "stage1"], "teacher": ["stem", "stage1"], "loss": "FSPLoss"}]
    with pytest.raises(ShapeMismatchError, match="connector"):
        Distiller(student, teacher, pairs)(paddle.randn([2, 3, 16, 16]))
    same = Distiller(TwoStage(8), TwoStage(8), pairs)(paddle.randn([2, 3, 16, 16]))
    assert float(same.loss) >= 0


def test_nan_input_names_the_pair_that_produced_it():
    student, teacher = TutorialModel(), TutorialModel()
    distiller = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)
    with paddle.no_grad():
        teacher.conv3.weight.set_value(paddle.full_like(teacher.conv3.weight, float("nan")))
    with pytest.raises(NonFiniteLossError) as err:
        distiller(paddle.randn([2, 3, 32, 32]))
    msg = str(err.value)
    assert "L2Loss:hidden_1" in msg and "teacher tensor contains NaN" in msg
    assert "SegChannelwiseLoss" not in msg


def test_close_removes_hooks():
    student, teacher = TutorialModel(), TutorialModel()
    distiller = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)
    assert student.conv2._forward_post_hooks
    distiller.close()
    assert not student.conv2._forward_post_hooks and not teacher.conv2._forward_post_hooks


def test_student_wrapped_in_data_parallel():
    student, teacher = _tutorial_pair()
    x = paddle.randn([2, 3, 32, 32])
    plain = Distiller(student, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)(x)
    expected = float(plain.loss)
    wrapped = paddle.DataParallel(student)
    out = Distiller(wrapped, teacher, TUTORIAL_CONFIG, StudentAdaptor, StudentAdaptor)(x)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-6)
    out = Distiller(wrapped, teacher, [{"student": "_layers.conv2", "teacher": "conv2", "loss": "l2"}])(x)
    assert float(out.loss) > 0


def test_teacher_stays_in_eval_mode_when_training():
    student, teacher = TwoStage(8), TwoStage(8)
    distiller = Distiller(student, teacher, [{"student": "stem", "teacher": "stem", "loss": "l1"}])
    teacher.train()
    distiller.train()
    assert student.training and not teacher.training
    mean_before = teacher.stem[1]._mean.numpy().copy()
    distiller(paddle.randn([4, 3, 16, 16]) + 5)
    np.testing.assert_array_equal(teacher.stem[1]._mean.numpy(), mean_before)


def test_list_layers_reports_names_types_shapes_and_parameters():
    rows = list_layers(TutorialModel(), paddle.randn([1, 3, 32, 32]))
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == ["conv1", "conv2", "conv3", "fc"]
    assert by_name["conv2"]["type"] == "Conv2D"
    assert by_name["conv2"]["output_shapes"] == [[1, 3, 32, 32]]
    assert by_name["conv2"]["params"] == 3 * 3 * 3 * 3 + 3
    assert by_name["fc"]["output_shapes"] == [[1, 10]]
    table = format_layers(rows)
    assert "conv2" in table and "1x3x32x32" in table
    rows = list_layers(TwoStage(8), paddle.randn([1, 3, 16, 16]))
    split = next(r for r in rows if r["name"] == "split")
    assert split["output_shapes"] == [[1, 16, 8, 8], [1, 16, 8, 8]]
