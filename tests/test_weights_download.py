"""Weights that configs name by URL: downloaded once through the libraries' own utilities from a server on
127.0.0.1, cached, loaded with N/M logged; an unreachable host is one clear error; full teacher weights
must cover every parameter."""
import os
import time

import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.apps import launch
from slim.engine.weights import WeightsUnavailableError
from tests.helpers.cli import run_process, run_tool
from tests.helpers.det_fixtures import make_tiny_det
from tests.helpers.seg_fixtures import make_tiny_seg
from tests.helpers.weights_server import (cache_env, closed_port_url, point_caches_at, save_archive, save_pdparams,
                                          serve)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return make_tiny_seg(str(tmp_path_factory.mktemp("weights_seg")))


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    return make_tiny_det(str(tmp_path_factory.mktemp("weights_det")))


@pytest.fixture
def home(tmp_path, monkeypatch):
    point_caches_at(monkeypatch, tmp_path / "home")
    return tmp_path / "home"


def shifted(state, by=0.5):
    """A state dict that differs from a fresh model's, so that loading it is visible."""
    return {k: paddle.to_tensor(v.numpy() + by) if v.dtype == paddle.float32 else v for k, v in state.items()}


def assert_loaded(layer, state):
    own = layer.state_dict()
    for k, v in state.items():
        if k in own:
            np.testing.assert_allclose(own[k].numpy(), v.numpy(), err_msg=k)


def test_seg_backbone_archive_url_is_downloaded_once_then_read_from_the_cache(seg, home, tmp_path):
    task, cfg = launch.load_task_config(seg["student"])
    backbone = shifted(task.build_model(cfg).backbone.state_dict())
    files = tmp_path / "files"
    save_archive(backbone, str(files / "resnet18_vd_ssld_v2.tar.gz"), "resnet18_vd_ssld_v2")
    with serve(str(files)) as server:
        url = server.url("resnet18_vd_ssld_v2.tar.gz")
        task, cfg = launch.load_task_config(seg["student"], [f"model.backbone.pretrained={url}"])
        first = []
        model = launch.build_student(task, cfg, log=first.append)
        assert server.gets("resnet18_vd_ssld_v2.tar.gz") == 1
        n = len(backbone)
        assert any(line.startswith("model.backbone.pretrained") and f"loaded {n}/{n} tensors into ResNet_vd" in line
                   for line in first), first
        assert_loaded(model.backbone, backbone)
        cached = home / ".paddleseg" / "pretrained_model" / "resnet18_vd_ssld_v2" / "model.pdparams"
        assert cached.is_file()

        again = []
        model = launch.build_student(task, cfg, log=again.append)
        assert server.gets("resnet18_vd_ssld_v2.tar.gz") == 1, "the second run downloaded again"
        assert any("is in the cache" in line for line in again), again
        assert_loaded(model.backbone, backbone)


def test_seg_local_backbone_file_loads_and_reports_what_it_skipped(seg, tmp_path):
    task, cfg = launch.load_task_config(seg["student"])
    backbone = shifted(task.build_model(cfg).backbone.state_dict())
    dropped = sorted(backbone)[0]
    partial = {k: v for k, v in backbone.items() if k != dropped}
    partial["not_a_layer.weight"] = paddle.zeros([2])
    path = save_pdparams(partial, str(tmp_path / "backbone.pdparams"))
    task, cfg = launch.load_task_config(seg["student"], [f"model.backbone.pretrained={path}"])
    lines = []
    model = launch.build_student(task, cfg, log=lines.append)
    line = next(line for line in lines if line.startswith("model.backbone.pretrained") and "loaded" in line)
    n = len(backbone)
    assert f"loaded {n - 1}/{n} tensors" in line and dropped in line and "not_a_layer.weight" in line
    assert_loaded(model.backbone, partial)


def test_teacher_full_weights_by_url_must_cover_every_parameter(seg, home, tmp_path):
    task, cfg = launch.load_task_config(seg["teacher"])
    full = shifted(task.build_model(cfg).state_dict())
    missing = sorted(full)[:2]
    save_pdparams(full, str(tmp_path / "files" / "teacher" / "model.pdparams"))
    save_pdparams({k: v for k, v in full.items() if k not in missing},
                  str(tmp_path / "files" / "partial" / "model.pdparams"))
    with serve(str(tmp_path / "files")) as server:
        url = server.url("teacher/model.pdparams")
        task, t_cfg = launch.load_task_config(seg["teacher"], [f"model.pretrained={url}"])
        lines = []
        teacher = launch.build_teacher(task, t_cfg, log=lines.append)
        assert any(f"loaded {len(full)}/{len(full)} tensors into DeepLabV3P" in line for line in lines), lines
        assert_loaded(teacher, full)
        assert server.gets("teacher/model.pdparams") == 1

        with pytest.raises(ConfigError) as err:
            launch.build_teacher(task, t_cfg, server.url("partial/model.pdparams"), log=lines.append)
    message = str(err.value)
    assert "missing in the file" in message and missing[0] in message


def test_unreachable_host_and_missing_file_are_one_clear_error(seg, home, tmp_path):
    url = closed_port_url("resnet18_vd_ssld_v2.tar.gz")
    task, cfg = launch.load_task_config(seg["student"], [f"model.backbone.pretrained={url}"])
    start = time.time()
    with pytest.raises(WeightsUnavailableError) as err:
        launch.build_student(task, cfg, log=lambda line: None)
    assert time.time() - start < 60
    message = str(err.value)
    assert url in message and "model.backbone.pretrained" in message
    assert "local path" in message and "model.backbone.pretrained=null" in message

    os.makedirs(tmp_path / "empty")
    with serve(str(tmp_path / "empty")) as server:
        url = server.url("nothing_here.tar.gz")
        task, cfg = launch.load_task_config(seg["student"], [f"model.backbone.pretrained={url}"])
        with pytest.raises(WeightsUnavailableError, match="HTTP 404"):
            launch.build_student(task, cfg, log=lambda line: None)


def test_offline_train_command_exits_with_one_line_and_no_traceback(seg, tmp_path):
    url = closed_port_url("resnet18_vd_ssld_v2.tar.gz")
    start = time.time()
    done = run_process("train", "--config", seg["student"], "--iters", 1, "--save_dir", tmp_path / "run",
                       "-o", f"model.backbone.pretrained={url}", env=cache_env(tmp_path / "home"), timeout=120)
    assert time.time() - start < 60
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and url in done.stderr and "=null" in done.stderr
    assert not (tmp_path / "run" / "iter_1").exists()


def test_det_backbone_file_without_prefix_loads_by_name_suffix_and_eval_takes_a_weights_url(det, home, tmp_path):
    task, cfg = launch.load_task_config(det["student"])
    model = task.build_model(cfg)
    backbone = shifted({k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")})
    full = shifted(model.state_dict(), by=0.25)
    save_pdparams(backbone, str(tmp_path / "files" / "MobileNetV3_small_x0_25_pretrained.pdparams"))
    save_pdparams(full, str(tmp_path / "files" / "student_final.pdparams"))
    with serve(str(tmp_path / "files")) as server:
        url = server.url("MobileNetV3_small_x0_25_pretrained.pdparams")
        task, cfg = launch.load_task_config(det["student"], [f"pretrain_weights={url}"])
        lines = []
        student = launch.build_student(task, cfg, log=lines.append)
        total = len(student.state_dict())
        assert any(line.startswith("pretrain_weights") and f"loaded {len(backbone)}/{total} tensors into YOLOv3" in line
                   for line in lines), lines
        assert_loaded(student.backbone, backbone)
        assert (home / ".cache" / "paddle" / "weights" / "MobileNetV3_small_x0_25_pretrained.pdparams").is_file()
        first = server.gets("MobileNetV3_small_x0_25_pretrained.pdparams")  # ppdet's download re-reads the headers
        assert first >= 1
        launch.build_student(task, cfg, log=lines.append)
        assert server.gets("MobileNetV3_small_x0_25_pretrained.pdparams") == first, "the second run downloaded again"

        assert run_tool("eval", "-c", det["student"], "-o", f"weights={server.url('student_final.pdparams')}") == 0
        assert server.gets("student_final.pdparams") >= 1


def test_cls_pretrained_true_loads_paddle_vision_imagenet_weights(home, tmp_path, monkeypatch):
    from paddle.vision.models import resnet
    from slim.tasks.cls.task import Task
    net = resnet.resnet18(num_classes=1000)
    weights = shifted(net.state_dict())
    save_pdparams(weights, str(tmp_path / "files" / "resnet18.pdparams"))
    cfg = {"model": {"type": "ResNet18", "num_classes": 10, "pretrained": True}}
    task = Task()
    with serve(str(tmp_path / "files")) as server:
        monkeypatch.setitem(resnet.model_urls, "resnet18", (server.url("resnet18.pdparams"), None))
        lines = []
        model = launch.build_student(task, cfg, log=lines.append)
    line = next(line for line in lines if line.startswith("model.pretrained") and "loaded" in line)
    n = len(model.backbone.net.state_dict())
    assert f"loaded {n}/{n} tensors" in line and "fc.weight" in line  # the 1000-class fc is not part of the backbone
    assert_loaded(model.backbone.net, weights)
    assert (home / ".cache" / "paddle" / "hapi" / "weights" / "resnet18.pdparams").is_file()


def test_under_launch_only_the_first_process_of_a_node_downloads(monkeypatch, tmp_path):
    from slim.engine import weights
    target = tmp_path / "w.pdparams"
    polls = []

    def cached(url):
        polls.append(url)
        if len(polls) == 3:  # the first process finishes while this one waits
            target.write_bytes(b"x")
        return str(target) if target.exists() else None

    def download(url):
        raise AssertionError("a second process of the node downloaded")

    monkeypatch.setattr(weights.time, "sleep", lambda s: None)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_RANK_IN_NODE", "1")
    assert weights.fetch("http://127.0.0.1:1/w.pdparams", "weights", cached, download, log=lambda line: None) == str(target)
    monkeypatch.setenv("PADDLE_RANK_IN_NODE", "0")
    target.unlink()
    with serve(str(tmp_path)) as server:
        (tmp_path / "w.pdparams").write_bytes(b"x")
        calls = []
        weights.fetch(server.url("w.pdparams"), "weights", lambda url: None,
                      lambda url: calls.append(url) or str(target), log=lambda line: None)
    assert len(calls) == 1
