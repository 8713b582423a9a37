"""Several teachers: their logits combined (mean_prob, mean_logit) or one term each (per_teacher), checked
against NumPy; pairs routed to the teacher they name; two teachers train, cache (one folder each, a changed
teacher refills only its own), resume and evaluate through the command line."""
import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

from slim.apps.launch import load_task_config
from slim.distill import Distiller
from slim.distill.ensemble import combine
from slim.distill.errors import ConfigError
from tests.helpers.cli import logged_losses as losses, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg, write_yaml


def softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----- the combination, against NumPy ----------------------------------------------------------------------
def test_mean_prob_and_mean_logit_against_numpy():
    rng = np.random.RandomState(0)
    a, b = rng.randn(3, 5, 2, 2).astype("float32"), rng.randn(3, 5, 2, 2).astype("float32") * 3
    got = combine([paddle.to_tensor(a), paddle.to_tensor(b)], "mean_prob").numpy()
    np.testing.assert_allclose(got, np.log((softmax(a) + softmax(b)) / 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(softmax(got), (softmax(a) + softmax(b)) / 2, rtol=1e-5, atol=1e-7)
    got = combine([paddle.to_tensor(a), paddle.to_tensor(b)], "mean_logit").numpy()
    np.testing.assert_allclose(got, (a + b) / 2, rtol=1e-6)


class Net(paddle.nn.Layer):
    def __init__(self, width=4):
        super().__init__()
        self.body = paddle.nn.Linear(3, width)
        self.head = paddle.nn.Linear(width, 5)

    def forward(self, x):
        return self.head(paddle.nn.functional.relu(self.body(x)))


def kl(t, s, axis=1):
    p, q = softmax(t, axis), softmax(s, axis)
    return float((p * (np.log(p) - np.log(q))).sum(axis=axis).mean())


def test_a_kl_pair_on_the_ensemble_equals_kl_to_the_mean_probability():
    paddle.seed(0)
    student, t1, t2 = Net(), Net(), Net(8)
    x = paddle.randn([6, 3])
    cfg = [{"name": "kd", "student": "$output", "teacher": "$output", "loss": "KLLoss", "ensemble": "mean_prob"},
           {"name": "each", "student": "$output", "teacher": "$output", "loss": "L2Loss", "ensemble": "per_teacher"},
           {"name": "body2", "student": "head", "teacher": "t2.head", "loss": "L2Loss"}]
    d = Distiller(student, {"t1": t1, "t2": t2}, cfg)
    assert [p.name for p in d.pairs] == ["kd", "each_t1", "each_t2", "body2"]
    assert [p.teachers for p in d.pairs] == [["t1", "t2"], ["t1"], ["t2"], ["t2"]]
    out = d(x)
    s, a, b = student(x).numpy(), t1(x).numpy(), t2(x).numpy()
    mean = (softmax(a) + softmax(b)) / 2
    expected = float((mean * (np.log(mean) - np.log(softmax(s)))).sum(1).mean())
    assert float(out.losses["kd"]) == pytest.approx(expected, rel=1e-5)
    assert float(out.losses["each_t1"]) == pytest.approx(float(((s - a) ** 2).mean()), rel=1e-5)
    assert float(out.losses["each_t2"]) == pytest.approx(float(((s - b) ** 2).mean()), rel=1e-5)
    assert float(out.losses["body2"]) == pytest.approx(float(((s - b) ** 2).mean()), rel=1e-5)
    assert d.teacher_tensor_names() == ["t1/'$output'", "t2/'$output'", "t2/'head'"]
    feats = d.teacher_features(x, teachers=["t2"])
    assert list(feats) == ["t2/'$output'", "t2/'head'"]


def test_a_pair_must_say_which_teacher_or_how_to_combine_them():
    paddle.seed(0)
    with pytest.raises(ConfigError, match="this run has 2 teachers .t1, t2.: name the one it compares with"):
        Distiller(Net(), {"t1": Net(), "t2": Net()}, [{"student": "head", "teacher": "head", "loss": "L2Loss"}])
    with pytest.raises(ConfigError, match="teacher 't3' is not one of this run's teachers"):
        Distiller(Net(), {"t1": Net(), "t2": Net()},
                  [{"student": "head", "teacher": "head", "loss": "L2Loss", "teacher_name": "t3"}])
    with pytest.raises(ConfigError, match="ensemble must be one of mean_prob, mean_logit, per_teacher"):
        Distiller(Net(), {"t1": Net(), "t2": Net()},
                  [{"student": "head", "teacher": "head", "loss": "L2Loss", "ensemble": "vote"}])


# ----- end to end: segmentation with two teachers ----------------------------------------------------------
ITERS = 4
COMMON = ["--iters", ITERS, "--log_iters", 1, "--device", "cpu", "--seed", 3]


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    task, cfg = load_task_config(paths["teacher"])
    for i in (1, 2, 3):
        paddle.seed(i)
        paddle.save(task.build_model(cfg).state_dict(), str(root / f"t{i}.pdparams"))
    student = yaml.safe_load(open(paths["student"]))
    student["distill_loss"] = {"types": [{"type": "KLLoss"}], "coef": [3], "ensemble": "mean_prob"}
    student["distill"] = [{"name": "feat_t2", "student": "backbone.bb_2_1", "teacher": "t2.backbone.bb_2_1",
                           "loss": "MSELoss", "weight": 0.5}]
    paths["student2"] = write_yaml(str(root / "student2.yml"), student)
    return paths


def two(seg, save_dir, *extra, second="t2"):
    return run_tool("distill_train", "-t", seg["teacher"], "-t", seg["teacher"], "-c", seg["student2"],
                    "--teacher_pretrained", seg["root"] / "t1.pdparams", "--teacher_pretrained",
                    seg["root"] / f"{second}.pdparams", *COMMON, "--save_interval", 2, "--save_dir", save_dir, *extra)


def record(save_dir):
    with open(os.path.join(save_dir, "record.txt")) as f:
        return f.read()


def test_two_teachers_train_cache_resume_and_evaluate(seg):
    root = seg["root"]
    assert two(seg, root / "live") == 0
    log = record(root / "live")
    assert "2 teachers: t1 (teacher.yml), t2 (teacher.yml)" in log
    assert "teachers t1 + t2 (mean_prob)" in log and "'feat_t2'" in log and "teacher t2" in log
    live = losses(root / "live")
    assert [i for i, _ in live] == list(range(1, ITERS + 1))
    assert all(set(row) == {"Train/loss", "Train/CrossEntropyLoss", "Train/distill_KLLoss", "Train/feat_t2"}
               for _, row in live)

    cache = root / "cache"
    assert two(seg, root / "fill", "--teacher_cache", cache, "--teacher_cache_dtype", "float32") == 0
    assert sorted(os.listdir(cache)) == ["t1", "t2"]
    assert two(seg, root / "cached", "--teacher_cache", cache, "--teacher_cache_dtype", "float32") == 0
    assert losses(root / "fill") == live and losses(root / "cached") == live  # float32: exact replay
    log = record(root / "cached")
    assert f"teacher cache {cache / 't1'}: 8 sample(s) read, 0 computed" in log
    assert f"teacher cache {cache / 't2'}: 8 sample(s) read, 0 computed" in log

    # another second teacher: only its cache is refused, then refilled; the first one's entries are read
    assert two(seg, root / "other", "--teacher_cache", cache, "--teacher_cache_dtype", "float32", second="t3") == 2
    assert two(seg, root / "other", "--teacher_cache", cache, "--teacher_cache_dtype", "float32",
               "--teacher_cache_rebuild", "--overwrite", second="t3") == 0
    log = record(root / "other")
    assert f"teacher cache {cache / 't1'}: 8 sample(s) read, 0 computed" in log
    assert f"teacher cache {cache / 't2'}: 0 sample(s) read, 8 computed" in log

    # resume: from iter_2 of the live run, to the same weights
    resumed = root / "resumed"
    os.makedirs(resumed)
    shutil.copytree(root / "live" / "iter_2", resumed / "iter_2")
    assert two(seg, resumed, "--resume_model", "auto") == 0
    a = paddle.load(str(root / "live" / f"iter_{ITERS}" / "model.pdparams"))
    b = paddle.load(str(resumed / f"iter_{ITERS}" / "model.pdparams"))
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    assert run_tool("eval", "--config", seg["student2"], "--model_path", root / "live" / f"iter_{ITERS}",
                    "--device", "cpu") == 0


def test_a_teachers_list_in_the_student_config(seg, capsys):
    root = seg["root"]
    student = yaml.safe_load(open(seg["student2"]))
    student["teachers"] = [{"name": "a", "config": seg["teacher"], "weights": str(root / "t1.pdparams")},
                           {"name": "b", "config": seg["teacher"], "weights": str(root / "t2.pdparams"),
                            "precision": "fp16"}]
    student["distill"][0]["teacher"] = "b.backbone.bb_2_1"
    path = write_yaml(str(root / "student_list.yml"), student)
    out = root / "listed"
    assert run_tool("distill_train", "-c", path, *COMMON, "--save_dir", out) == 0
    log = record(out)
    assert "2 teachers: a (teacher.yml), b (teacher.yml, fp16)" in log
    assert "teacher b, its own precision: fp32 (fp16 O1 was asked for, but this run is on cpu" in log
    assert run_tool("distill_train", "-c", path, "-t", seg["teacher"], *COMMON, "--save_dir", root / "x") == 2
    assert "lists `teachers:`; drop -t" in capsys.readouterr().err


# ----- PaddleClas: a DistillationModel with two frozen teachers ---------------------------------------------
def test_a_paddleclas_config_with_two_frozen_teachers_trains_and_caches_each(tmp_path):
    from slim.datasets import mnist
    from tests.helpers.cli import ROOT
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=2)  # 20 train images
    config = os.path.join(ROOT, "configs", "ppcls", "two_teachers_distill_mnist.yaml")
    from slim.tasks.ppcls.arch import backbone_factory
    for i in (1, 2):  # two untrained ResNet18 teachers of different seeds
        paddle.seed(i)
        paddle.save(backbone_factory("ResNet18")(class_num=10).state_dict(), str(tmp_path / f"t{i}.pdparams"))
    opts = ["-o", f"DataLoader.Train.dataset.image_root={data}", f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            "DataLoader.Train.sampler.batch_size=4", "Global.print_batch_step=1", "Global.epochs=1",
            "Global.eval_during_train=False", f"Arch.models.0.Teacher1.pretrained={tmp_path / 't1'}",
            f"Arch.models.1.Teacher2.pretrained={tmp_path / 't2'}"]
    common = ["--seed", 0, "--device", "cpu"]
    cache = tmp_path / "cache"
    runs = {}
    for name, extra in (("live", []), ("fill", ["--teacher_cache", cache, "--teacher_cache_dtype", "float32"]),
                        ("cached", ["--teacher_cache", cache, "--teacher_cache_dtype", "float32"])):
        assert run_tool("train", "-c", config, *opts, f"Global.output_dir={tmp_path / name}", *common, *extra) == 0
        runs[name] = losses(tmp_path / name / "DistillationModel")
    assert sorted(os.listdir(cache)) == ["Teacher1", "Teacher2"]
    assert runs["live"] and runs["fill"] == runs["live"] and runs["cached"] == runs["live"]
    assert all("Train/loss_kldiv_Student_Teacher1+Teacher2" in row for _, row in runs["live"])


# ----- PaddleDetection: two --slim_config files, each with its teacher and method ---------------------------
def test_two_paddledetection_slim_configs_distil_from_their_own_teachers(tmp_path):
    from tests.helpers.det_slim_fixtures import make_gfl, save_random_weights, slim_yaml
    root = str(tmp_path)
    dets = make_gfl(root)
    task, cfg = load_task_config(dets["teacher"])
    other = save_random_weights(task, cfg, os.path.join(root, "gfl_teacher_b.pdparams"))
    cwd = dict(slim_method="CWD", distill_loss="ChannelWiseDivergence", distill_loss_name=["cls_f_2", "cls_f_1"],
               ChannelWiseDivergence={"student_channels": 1, "teacher_channels": 1, "tau": 2.0, "weight": 5.0})
    first = slim_yaml(root, "cwd_a.yml", dets["teacher"], dets["teacher_weights"], **cwd)
    second = slim_yaml(root, "cwd_b.yml", dets["teacher"], other, **cwd)
    save = tmp_path / "run"
    assert run_tool("train", "-c", dets["student"], "--slim_config", first, "--slim_config", second, "--iters", 2,
                    "--log_iters", 1, "--device", "cpu", "--save_dir", save) == 0
    log = record(save)
    assert "2 teachers: s1 (cwd_a.yml), s2 (cwd_b.yml)" in log
    assert "'s1_cls_f_2'" in log and "teacher s1" in log and "'s2_cls_f_2'" in log and "teacher s2" in log
    row = losses(save)[-1][1]
    assert {"Train/s1_cls_f_2", "Train/s2_cls_f_2", "Train/s1_neck_f_0", "Train/s2_neck_f_0"} <= set(row)
