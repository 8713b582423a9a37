"""PaddleClas configs end to end on tiny real MNIST (ImageNetDataset layout), through tools/train.py, tools/eval.py,
tools/export.py and slim/distill/distill_train.py: the quick-start workflow (plain teacher, then the frozen-teacher
distillation given the teacher by -o Arch.models.0.Teacher.pretrained), mutual learning with exact resume, MGD,
and the errors a user meets."""
import os

import numpy as np
import paddle
import pytest

from slim.datasets import mnist
from slim.tasks import detect_task_name
from slim.tasks.ppcls import config as pc
from tests.helpers.cli import ROOT, logged_losses, run_tool
from tests.helpers.resume import assert_same_weights, run_interrupted

CONFIGS = os.path.join(ROOT, "configs", "ppcls")


def cfg_path(name):
    return os.path.join(CONFIGS, name)


def data_opts(data, batch=8):
    return ["-o", f"DataLoader.Train.dataset.image_root={data}",
            f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            f"DataLoader.Train.sampler.batch_size={batch}", "Global.print_batch_step=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppcls")
    data = str(root / "data")
    mnist.prepare(data, per_class=3)  # 30 train, 30 val images
    out = root / "out"
    teacher = ["-o", "Arch.name=ResNet18", f"Global.output_dir={out}", "Global.epochs=2"]
    assert run_tool("train", "-c", cfg_path("ResNet50_vd_mnist.yaml"), *data_opts(data), *teacher, "--seed", 0) == 0
    return {"root": root, "data": data, "out": out, "teacher": out / "ResNet18" / "best_model"}


QUICK = ["-o", "Arch.models.0.Teacher.name=ResNet18", "Arch.models.1.Student.name=MobileNetV3_small_x0_35"]


def test_configs_are_detected_as_paddleclas_and_cls_configs_are_not():
    for name in os.listdir(CONFIGS):
        assert detect_task_name(pc.read_yaml(cfg_path(name))) == "ppcls", name
    from slim.distill.config import load_config
    assert detect_task_name(load_config(os.path.join(ROOT, "configs/cls/convnet_teacher_mnist.yml")).to_dict()) == "cls"


def test_overrides_as_paddleclas_reads_them():
    cfg, log = pc.read_yaml(cfg_path("resnet34_distill_resnet18_mgd.yaml")), []
    for opt in ["DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=28",
                "DataLoader.Train.dataset.transform_ops.1.RandCropImage.scale=[0.6, 1.0]",
                "Arch.models.0.Teacher.pretrained=null", "Global.new_key=True", "Optimizer.lr.learning_rate=0.01"]:
        pc.apply_override(cfg, opt, log.append)
    crop = cfg["DataLoader"]["Train"]["dataset"]["transform_ops"][1]["RandCropImage"]
    assert crop == {"size": 28, "scale": [0.6, 1.0]}
    assert cfg["Arch"]["models"][0]["Teacher"]["pretrained"] is None and cfg["Global"]["new_key"] is True
    assert cfg["Optimizer"]["lr"]["learning_rate"] == 0.01
    assert any("'scale' is a new key" in line for line in log) and any("'new_key'" in line for line in log)
    with pytest.raises(Exception, match="has 2 items; index 5 is out of range"):
        pc.apply_override(cfg, "Arch.models.5.Teacher.name=X", log.append)
    assert pc.merge_opts(["-c", "X", "-o", "a=1", "--iters", "2", "-o", "b=2", "c=-3", "--save_dir=d"]) == \
        ["-c", "X", "--iters", "2", "--save_dir=d", "-o", "a=1", "b=2", "c=-3"]


def test_plain_teacher_trains_and_evaluates_with_path_without_pdparams(run, capsys):
    best = run["teacher"]
    assert (best / "model.pdparams").is_file()
    log = (run["out"] / "ResNet18" / "record.txt").read_text()
    assert "Global.device is gpu but no GPU is visible" in log and "CELoss:" in log
    capsys.readouterr()
    assert run_tool("eval", "-c", cfg_path("ResNet50_vd_mnist.yaml"), *data_opts(run["data"]),
                    "-o", "Arch.name=ResNet18",
                    f"Global.pretrained_model={best}") == 0
    assert "[EVAL] #Images: 30 top1:" in capsys.readouterr().out


def test_quick_start_distillation_with_frozen_teacher_then_eval_and_export(run, capsys, tmp_path):
    out = tmp_path / "out"
    args = [*data_opts(run["data"]), *QUICK, f"Arch.models.0.Teacher.pretrained={run['teacher']}",
            f"Global.output_dir={out}"]
    assert run_tool("train", "-c", cfg_path("R50_vd_distill_MV3_large_x1_0_mnist.yaml"), *args, "--iters", 3) == 0
    run_dir = out / "DistillationModel"
    log = (run_dir / "record.txt").read_text()
    assert "loaded 107/107 tensors into Teacher (ResNet18, frozen)" in log
    assert "CELoss_Student_Teacher:" in log and "[EVAL] #Images: 30 top1 (Student):" in log
    saved = paddle.load(str(run_dir / "iter_3" / "model.pdparams"))
    teacher = paddle.load(str(run["teacher"] / "model.pdparams"))
    for k, v in teacher.items():  # frozen: weights and BN statistics untouched
        np.testing.assert_array_equal(saved[f"Teacher.{k}"].numpy(), v.numpy())
    assert (run_dir / "best_model" / "Student.pdparams").is_file()
    capsys.readouterr()
    weights = str(run_dir / "best_model" / "model")  # neither a file nor a folder: +.pdparams
    os.rename(run_dir / "best_model" / "model.pdparams", weights + ".pdparams")
    assert run_tool("eval", "-c", cfg_path("R50_vd_distill_MV3_large_x1_0_mnist.yaml"), *args,
                    f"Global.pretrained_model={weights}") == 0
    assert "top1 (Student):" in capsys.readouterr().out
    inference = tmp_path / "inference"
    assert run_tool("export", "-c", cfg_path("R50_vd_distill_MV3_large_x1_0_mnist.yaml"), *args,
                    f"Global.pretrained_model={weights}", "-o", f"Global.save_inference_dir={inference}") == 0
    assert "exported Student of DistillationModel" in capsys.readouterr().out
    assert (inference / "inference.pdiparams").is_file()


def test_mutual_learning_trains_both_and_resumes_exactly(run, tmp_path):
    cfg = cfg_path("PPLCNet_x2_5_udml.yaml")
    args = [*data_opts(run["data"]), "-o", "Arch.models.0.Teacher.name=PPLCNet_x0_25",
            "Arch.models.1.Student.name=PPLCNet_x0_25", "Global.eval_during_train=False", "--seed", 0,
            "--save_interval", 2]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_tool("distill_train", "-c", cfg, *args, "--iters", 4, "--save_dir", straight) == 0
    log = (straight / "record.txt").read_text()
    assert "trained: Teacher, Student (mutual learning" in log
    for term in ("CELoss_Student", "CELoss_Teacher", "DMLLoss_Student_Teacher_0", "loss_l2_loss_l2_0"):
        assert term + ":" in log
    start = paddle.load(str(straight / "iter_2" / "model.pdparams"))
    end = paddle.load(str(straight / "iter_4" / "model.pdparams"))
    for who in ("Teacher", "Student"):
        key = next(k for k in end if k.startswith(who + ".") and k.endswith("weight"))
        assert not np.allclose(start[key].numpy(), end[key].numpy()), f"{who} did not train"
    assert run_interrupted(2, "distill_train", "-c", cfg, *args, "--iters", 4, "--save_dir", broken) != 0
    assert run_tool("distill_train", "-c", cfg, *args, "--iters", 4, "--save_dir", broken,
                    "--resume_model", "auto") == 0
    assert_same_weights(straight / "iter_4", broken / "iter_4")


def test_mgd_generator_trains_with_the_student_and_is_checkpointed(run, tmp_path):
    args = [*data_opts(run["data"]), "-o", "Arch.models.0.Teacher.name=ResNet18",
            f"Arch.models.0.Teacher.pretrained={run['teacher']}", 'Arch.models.0.Teacher.return_patterns=["blocks[7]"]',
            "Loss.Train.1.DistillationPairLoss.t_key=blocks[7]", "Global.eval_during_train=False",
            "Optimizer.lr.values=[0.001, 0.0001, 0.00001, 0.000001]", "--iters", 2, "--save_interval", 1,
            "--save_dir", tmp_path / "mgd"]
    assert run_tool("train", "-c", cfg_path("resnet34_distill_resnet18_mgd.yaml"), *args) == 0
    assert "loss_mgd_0_Student_Teacher:" in (tmp_path / "mgd" / "record.txt").read_text()
    a = paddle.load(str(tmp_path / "mgd" / "iter_1" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "mgd" / "iter_2" / "model.pdparams"))
    gen = [k for k in b if k.startswith("loss_layers.0.loss_func.generation")]
    assert gen and not np.allclose(a[gen[0]].numpy(), b[gen[0]].numpy())


def test_teacher_cache_serves_the_frozen_teacher_of_a_distillation_model(run, tmp_path, capsys):
    """--teacher_cache with a DistillationModel config: the frozen Teacher's logits and return_patterns are
    stored, and a run reading them logs the uncached run's losses bit for bit (float32 entries) without
    running the Teacher; a changed transform is refused; mutual learning has no frozen teacher to store."""
    cfg = cfg_path("resnet34_distill_resnet18_mgd.yaml")
    args = [*data_opts(run["data"]), "-o", "Arch.models.0.Teacher.name=ResNet18",
            f"Arch.models.0.Teacher.pretrained={run['teacher']}", 'Arch.models.0.Teacher.return_patterns=["blocks[7]"]',
            "Loss.Train.1.DistillationPairLoss.t_key=blocks[7]", "Global.eval_during_train=False",
            "Optimizer.lr.values=[0.001, 0.0001, 0.00001, 0.000001]", "--iters", 5, "--log_iters", 1, "--seed", 0]
    cache = tmp_path / "cache"
    flags = ["--teacher_cache", cache, "--teacher_cache_dtype", "float32"]
    for name, extra in (("uncached", []), ("fill", flags), ("cached", flags)):
        assert run_tool("train", "-c", cfg, *args, "--save_dir", tmp_path / name, *extra) == 0, name
    # 30 samples, batch 8, drop_last False: 4 iterations per epoch, the last batch filled up; 5 iterations
    # cross into the second epoch
    fill, cached = (tmp_path / "fill" / "record.txt").read_text(), (tmp_path / "cached" / "record.txt").read_text()
    assert "4 iterations per epoch" in fill
    assert "new, for Teacher/logits, Teacher/blocks[7]" in fill and "0 sample(s) read, 40 computed" in fill
    assert "40 sample(s) read, 0 computed" in cached
    expected = logged_losses(tmp_path / "uncached")
    assert [i for i, _ in expected] == [1, 2, 3, 4, 5] and "Train/loss_mgd_0_Student_Teacher" in expected[0][1]
    assert logged_losses(tmp_path / "fill") == expected and logged_losses(tmp_path / "cached") == expected
    # the cached run did not run the Teacher in training: only the model summary at set-up (parameters, MACs of
    # one example) calls it once
    from slim.tasks.ppcls import arch
    calls = []
    original = arch.DistillationModel._run_frozen
    try:
        arch.DistillationModel._run_frozen = lambda self, name, x: calls.append(name) or original(self, name, x)
        assert run_tool("train", "-c", cfg, *args, "--save_dir", tmp_path / "again", *flags) == 0
    finally:
        arch.DistillationModel._run_frozen = original
    assert calls == ["Teacher"] and logged_losses(tmp_path / "again") == expected
    capsys.readouterr()
    assert run_tool("train", "-c", cfg, *args, "-o", "DataLoader.Train.dataset.transform_ops.1.RandCropImage.size=28",
                    "--save_dir", tmp_path / "other", *flags) == 2
    assert "training data" in capsys.readouterr().err
    udml = [*data_opts(run["data"]), "-o", "Arch.models.0.Teacher.name=PPLCNet_x0_25",
            "Arch.models.1.Student.name=PPLCNet_x0_25", "--iters", 1]
    assert run_tool("train", "-c", cfg_path("PPLCNet_x2_5_udml.yaml"), *udml, "--save_dir", tmp_path / "udml",
                    "--teacher_cache", tmp_path / "c2") == 2
    assert "freezes no model (mutual learning" in capsys.readouterr().err


def test_sampler_drop_last_and_shuffle_as_paddleclas_sets_them(run):
    from slim.engine.data import ResumableBatchSampler
    from slim.tasks.ppcls.task import Task
    cfg = pc.load(cfg_path("ResNet50_vd_mnist.yaml"), data_opts(run["data"])[1:])
    task = Task()
    assert task.iters_per_epoch(cfg) == 4  # 30 samples, batch 8, drop_last False
    assert task.training_settings(cfg)["drop_last"] is False and task.training_settings(cfg)["shuffle"] is True
    cfg["DataLoader"]["Train"]["sampler"]["drop_last"] = True
    assert task.iters_per_epoch(cfg) == 3
    for n, batch, world in ((30, 8, 1), (30, 4, 2), (3, 8, 1)):
        seen = []
        for rank in range(world):
            sampler = ResumableBatchSampler(n, batch, True, False, rank, world, seed=1)
            keys = [k for b in sampler for k in b]
            assert all(len(b) == batch for b in sampler)
            seen += [i for _, i in keys]
        assert set(seen) == set(range(n)), (n, batch, world)  # every sample in the epoch, every batch full


def test_timm_autoaugment_and_random_erasing_train_from_the_config(run, tmp_path):
    ops = ('DataLoader.Train.dataset.transform_ops=[{DecodeImage: {to_rgb: True}}, {RandCropImage: {size: 32}}, '
           '{TimmAutoAugment: {config_str: rand-m9-mstd0.5-inc1, interpolation: bicubic, img_size: 32}}, '
           '{NormalizeImage: {scale: 1.0/255.0, order: ""}}, {RandomErasing: {EPSILON: 0.25, sl: 0.02, sh: 1.0/3.0, '
           'r1: 0.3, attempt: 10, use_log_aspect: True, mode: pixel}}]')
    args = [*data_opts(run["data"]), "-o", "Arch.name=MobileNetV3_small_x0_35", ops, "Global.eval_during_train=False",
            "--iters", 2, "--save_dir", tmp_path / "aa"]
    assert run_tool("train", "-c", cfg_path("ResNet50_vd_mnist.yaml"), *args) == 0
    assert "iter: 2/2" in (tmp_path / "aa" / "record.txt").read_text()


def test_user_errors_are_one_clear_line(run, capsys, tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("HOME", str(tmp_path))  # an empty weights cache
    dkd = cfg_path("resnet34_distill_resnet18_dkd.yaml")
    base = [*data_opts(run["data"]), "--iters", 1, "--save_dir", tmp_path / "x"]
    cases = [
        (["-o", "Arch.models.0.Teacher.name=ResNet18", "Arch.models.0.Teacher.class_num=7",
          f"Arch.models.0.Teacher.pretrained={run['teacher']}"], "fc.weight"),  # classifier of another shape
        (["-o", "Arch.models.0.Teacher.pretrained=False"], r"is frozen \(freeze_params_list\) but has no weights"),
        (["-o", "Arch.models.0.Teacher.name=ResNet18", f"Arch.models.0.Teacher.pretrained={run['teacher']}",
          'Arch.models.0.Teacher.return_patterns=["blocks[15]"]'],
         r"has no layer 'blocks\[15\]'.*Its layers.*blocks\.7"),
        (["-o", "Loss.Train.1={AFDLoss: {weight: 1.0}}"], "loss 'AFDLoss' is not supported here; supported: CELoss"),
        (["-o", "Arch.models.0.Teacher.pretrained=True"],
         "Arch.models.0.Teacher.pretrained = https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/"
         "legendary_models/ResNet34_pretrained.pdparams: cannot download"),
        (["-o", "Arch.class_num=5"], r"labels \[5, 6, 7, 8, 9\] outside \[0, 4\]"),
        (["-o", "DataLoader.Train.dataset.batch_transform_ops=[{OpSampler: {MixupOperator: {alpha: 0.2, prob: 1}}}]"],
         r"DistillationDKDLoss reads each sample.s class.*use_target_as_gt: True.*batch_transform_ops=null"),
        (["-o", "DataLoader.Train.dataset.transform_ops.1={GridMask: null}"],
         "transform op 'GridMask' is not supported; supported: DecodeImage"),
        (["-t", dkd], "its teacher is one of Arch.models"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert run_tool("train", "-c", dkd, *base, *extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        import re
        assert re.search(message, err), (message, err)


def test_the_trainer_steps_paddleclas_schedule(run):
    """The rate logged after each iteration of the teacher run (Cosine 0.04, L2 1e-4, 2 epochs of 4 iterations) is
    the rate PaddleClas d178931 gives the next iteration (its scheduler, as in tests/test_ppcls_schedules.py)."""
    import json
    paddleclas = [0.04, 0.03847759065022573, 0.034142135623730946, 0.027653668647301795, 0.019999999999999997,
                  0.012346331352698204, 0.00585786437626905, 0.001522409349774265]
    with open(run["out"] / "ResNet18" / "history.jsonl") as f:
        logged = {row["iter"]: row["Train/lr"] for row in map(json.loads, f) if "Train/lr" in row}
    assert [logged[i] for i in range(1, 8)] == pytest.approx(paddleclas[1:], rel=1e-6)
    log = (run["out"] / "ResNet18" / "record.txt").read_text()
    assert "Optimizer.lr Cosine as PaddleClas computes it: CosineAnnealingDecay, stepped every iteration" in log
    from slim.tasks.ppcls.optimizer import optimizer_settings
    opt, _ = optimizer_settings({"name": "Momentum", "momentum": 0.9, "weight_decay": "1e-4", "lr": {
        "name": "Cosine", "learning_rate": 0.1}}, 10, 2, log=lambda _: None)
    assert opt == {"type": "Momentum", "momentum": 0.9, "use_nesterov": False, "weight_decay": 1e-4}
    with pytest.raises(Exception, match="Optimizer name 'Lamb' is not supported"):
        optimizer_settings({"name": "Lamb", "lr": 0.1}, 1, 1)
