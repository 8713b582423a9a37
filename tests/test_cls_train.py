"""Classification end to end on tiny real MNIST: teacher, distillation with a frozen shared head, resume,
named run folders, eval-only of existing weights (metrics + .npy embeddings), --init_weights, export."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

from slim.tasks.cls import build_classifier
from slim.tasks.cls.metrics import classification_metrics
from tests.helpers.cli import run_tool
from tests.helpers.cls_fixtures import STUDENT_MODEL, TEACHER_MODEL, make_tiny_cls, write_yaml
from tests.helpers.resume import assert_same_weights, logged_losses, run_interrupted


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    paths = make_tiny_cls(str(root))
    paths["root"] = root
    teacher_dir = root / "teacher"
    assert run_tool("train", "--config", paths["teacher"], "--iters", 6, "--save_interval", 3, "--do_eval",
                    "--log_iters", 3, "--seed", 0, "--save_dir", teacher_dir) == 0
    paths["teacher_dir"] = teacher_dir
    paths["teacher_weights"] = str(teacher_dir / "iter_6" / "model.pdparams")
    head_dir = root / "head_fixed"
    assert run_tool("distill_train", "--teacher_config", paths["teacher"], "--student_config", paths["head_fixed"],
                    "--teacher_pretrained", paths["teacher_weights"], "--iters", 4, "--save_interval", 2,
                    "--log_iters", 1, "--do_eval", "--seed", 0, "--save_dir", head_dir) == 0
    paths["head_dir"] = head_dir
    return paths


def read(path):
    with open(path) as f:
        return f.read()


def params(state):
    """The state's values without the BatchNorm statistics."""
    return {k: v.numpy() for k, v in state.items() if not k.endswith(("_mean", "_variance"))}


def test_teacher_run_logs_metrics_and_saves_best_model_with_embeddings(cls):
    run = cls["teacher_dir"]
    log = read(run / "record.txt")
    assert "[EVAL] #Images: 60 top1:" in log and "top5:" in log and "recall@1:" in log
    assert "30 queries vs a gallery of 30" in log
    best = run / "best_model"
    metrics = json.loads(read(best / "metrics.json"))
    assert {"top1", "top5", "recall_at_1"} <= set(metrics)
    emb, labels = np.load(best / "val_embeddings.npy"), np.load(best / "val_labels.npy")
    assert emb.shape == (60, TEACHER_MODEL["embedding_dim"]) and labels.tolist() == sorted(labels.tolist())
    logits = np.load(best / "val_logits.npy")
    recomputed = classification_metrics(logits, emb, labels)  # the saved arrays give the logged numbers
    for key in ("top1", "top5", "recall_at_1"):
        assert recomputed[key] == pytest.approx(metrics[key])


def test_frozen_shared_head_is_the_teachers_and_stays_unchanged_while_the_rest_trains(cls):
    teacher = paddle.load(cls["teacher_weights"])
    log = read(cls["head_dir"] / "record.txt")
    assert "head_from_teacher" in log and "embedding_projection" in log and "distill_KLLoss" in log
    first, last = (paddle.load(str(cls["head_dir"] / f"iter_{i}" / "model.pdparams")) for i in (2, 4))
    for key in ("head.weight", "head.bias"):
        np.testing.assert_array_equal(last[key].numpy(), teacher[key].numpy())
        np.testing.assert_array_equal(first[key].numpy(), teacher[key].numpy())
    changed = [k for k in params(last) if not k.startswith("head.")
               and not np.array_equal(first[k].numpy(), last[k].numpy())]
    assert "projection.weight" in changed and any(k.startswith("backbone.") for k in changed)
    assert last["projection.weight"].shape == [16, TEACHER_MODEL["embedding_dim"]]  # 4 ch x 2 x 2 -> 32
    # the student's weights load into the plain student model built from its own config
    plain = build_classifier(STUDENT_MODEL, projection=TEACHER_MODEL["embedding_dim"])
    assert sorted(plain.state_dict()) == sorted(last)


def test_eval_only_of_existing_weights_prints_metrics_and_saves_npy(cls, capsys, tmp_path):
    out = tmp_path / "eval"
    assert run_tool("eval", "--config", cls["head_fixed"], "--model_path", cls["head_dir"] / "best_model",
                    "--save_json", tmp_path / "m.json", "--save_dir", out) == 0
    text = capsys.readouterr().out
    assert "[EVAL] #Images: 60 top1:" in text and "top5:" in text and "recall@1:" in text
    metrics = json.loads((tmp_path / "m.json").read_text())
    emb = np.load(out / "val_embeddings.npy")
    assert emb.shape == (60, TEACHER_MODEL["embedding_dim"])  # the projected embedding
    assert np.load(out / "val_is_gallery.npy").sum() == 30
    assert len(read(out / "val_files.txt").split()) == 60
    recomputed = classification_metrics(np.load(out / "val_logits.npy"), emb, np.load(out / "val_labels.npy"))
    assert recomputed["top1"] == pytest.approx(metrics["top1"])
    # the teacher's weights with the teacher's config: same command; npy beside --save_json by default
    os.makedirs(tmp_path / "t")
    assert run_tool("eval", "--config", cls["teacher"], "--model_path", cls["teacher_weights"],
                    "--save_json", tmp_path / "t" / "m.json") == 0
    assert "top1:" in capsys.readouterr().out
    assert np.load(tmp_path / "t" / "val_embeddings.npy").shape == (60, 32)


def test_resume_after_interrupt_equals_an_unbroken_run(cls):
    common = ["--teacher_config", cls["teacher"], "--student_config", cls["head_fixed"], "--teacher_pretrained",
              cls["teacher_weights"], "--iters", 5, "--save_interval", 100, "--log_iters", 1, "--seed", 3]
    unbroken, broken = cls["root"] / "unbroken", cls["root"] / "broken"
    assert run_tool("distill_train", *common, "--save_dir", unbroken) == 0
    assert run_interrupted(3, "distill_train", *common, "--save_dir", broken) == 130  # at the fourth step
    assert "--resume_model" in read(broken / "record.txt")
    assert run_tool("distill_train", *common, "--save_dir", broken, "--resume_model", broken / "iter_3") == 0
    assert_same_weights(unbroken / "iter_5", broken / "iter_5")
    last = logged_losses(unbroken / "record.txt", "iter: 5/5")
    assert last and last == logged_losses(broken / "record.txt", "iter: 5/5")


def test_init_weights_starts_the_student_from_given_weights(cls, tmp_path):
    # lr 0: the run must end where --init_weights started it (BN statistics aside)
    init = str(cls["head_dir"] / "iter_4" / "model.pdparams")  # a student with a projection
    out = tmp_path / "init"
    assert run_tool("distill_train", "--teacher_config", cls["teacher"], "--student_config", cls["head_fixed"],
                    "--teacher_pretrained", cls["teacher_weights"], "--init_weights", init, "--iters", 2,
                    "--seed", 1, "--save_dir", out, "-o", "lr_scheduler.learning_rate=0",
                    "lr_scheduler.warmup_iters=0") == 0
    assert f"student weights {init}: loaded " in read(out / "record.txt")
    start, end = params(paddle.load(init)), params(paddle.load(str(out / "iter_2" / "model.pdparams")))
    assert sorted(start) == sorted(end)
    for key in start:
        np.testing.assert_array_equal(start[key], end[key], err_msg=key)


def test_run_folder_is_named_from_the_settings(cls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_tool("distill_train", "--teacher_config", cls["teacher"], "--student_config", cls["head_fixed"],
                    "--teacher_pretrained", cls["teacher_weights"], "--iters", 1, "--seed", 0) == 0
    run = (tmp_path / "output" / "convnet_8-16_e32-convnet_4-KL-T4-head_fixed"
           / "lr0.01_AdamW_CosineAnnealingDecay_iters1_warmup1_bs16")
    assert (run / "record.txt").is_file() and (run / "iter_1" / "model.pdparams").is_file()


def test_dkd_and_embedding_l2_pair_run(cls, tmp_path):
    out = tmp_path / "feat"
    assert run_tool("distill_train", "--teacher_config", cls["teacher"], "--student_config", cls["features"],
                    "--teacher_pretrained", cls["teacher_weights"], "--iters", 2, "--log_iters", 1,
                    "--seed", 0, "--save_dir", out) == 0
    log = read(out / "record.txt")
    assert "distill_DKDLoss" in log and "embedding_l2" in log
    assert os.path.isfile(out / "iter_2" / "connectors.pdparams")  # the linear connector lives beside the student


def test_width_mismatch_and_class_count_errors_from_the_command_line(cls, tmp_path, capsys):
    code = run_tool("distill_train", "--teacher_config", cls["teacher"], "--student_config", cls["head_no_projection"],
                    "--teacher_pretrained", cls["teacher_weights"], "--iters", 1, "--save_dir", tmp_path / "a")
    err = capsys.readouterr().err
    assert code == 2 and "16-d" in err and "32-d" in err and "embedding_projection: true" in err
    assert "model.embedding_dim: 32" in err
    other = write_yaml(str(tmp_path / "t5.yml"), dict(yaml.safe_load(read(cls["teacher"])),
                                                       model=dict(TEACHER_MODEL, num_classes=5)))
    code = run_tool("distill_train", "--teacher_config", other, "--student_config", cls["student"],
                    "--allow_untrained_teacher", "--iters", 1, "--save_dir", tmp_path / "b")
    err = capsys.readouterr().err
    assert code == 2 and "teacher predicts 5 classes and the student 10" in err
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_an_undecodable_training_image_stops_the_run_naming_it(cls, tmp_path, capsys):
    data = tmp_path / "data"
    os.makedirs(data / "train" / "0")
    good = os.path.join(cls["data"], "train", "0", sorted(os.listdir(os.path.join(cls["data"], "train", "0")))[0])
    shutil.copy(good, data / "train" / "0" / "0.png")
    (data / "train" / "0" / "1.png").write_bytes(b"\x89PNG not really")
    (data / "list.txt").write_text("train/0/0.png 0\ntrain/0/1.png 0\n")
    cfg = yaml.safe_load(read(cls["student"]))
    cfg["train_dataset"].update(dataset_root=str(data), file_list=str(data / "list.txt"))
    cfg["batch_size"] = 2
    path = write_yaml(str(tmp_path / "bad.yml"), cfg)
    assert run_tool("train", "--config", path, "--iters", 2, "--save_dir", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "Cannot decode image" in err and os.path.join("train", "0", "1.png") in err


def test_export_returns_logits_and_embedding_like_the_dygraph_model(cls, tmp_path, capsys):
    weights = str(cls["head_dir"] / "iter_4" / "model.pdparams")
    assert run_tool("export", "--config", cls["head_fixed"], "--model_path", weights, "--save_dir", tmp_path,
                    "--check_shape", "1,1,28,28") == 0
    assert "max |saved - dygraph|" in capsys.readouterr().out
    loaded = paddle.jit.load(str(tmp_path / "model"))
    loaded.eval()
    plain = build_classifier(STUDENT_MODEL, projection=TEACHER_MODEL["embedding_dim"])
    plain.set_state_dict(paddle.load(weights))
    plain.eval()
    x = paddle.randn([3, 1, 32, 28])  # another size than the check: the spec is dynamic
    logits, emb = loaded(x)
    np.testing.assert_allclose(logits.numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb.numpy(), plain.embed(x).numpy(), rtol=1e-4, atol=1e-5)
    assert emb.shape == [3, TEACHER_MODEL["embedding_dim"]]  # the projection is exported with the student
