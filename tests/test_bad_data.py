"""Data faults give one clear error each: exit status 2, the file named, what to change, no traceback, no hang.

Each case breaks a copy of the tiny data (tests/helpers/seg_fixtures.py, cls_fixtures.py) and runs the real
command as a subprocess with a timeout, so that a hang fails its test instead of the suite.
"""
import os
import shutil
import threading

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from slim.distill import ConfigError, Distiller
from slim.engine.data import BatchStream
from slim.tasks.seg.task import Task as SegTask
from tests.helpers.cli import run_process
from tests.helpers.cls_fixtures import make_tiny_cls
from tests.helpers.seg_fixtures import make_tiny_seg, write_yaml

TIMEOUT = 120
ENV = {"OMP_NUM_THREADS": "1"}
BAD = "slice_023.png"  # the second training sample: read by the loader thread, not by the first example


@pytest.fixture(scope="module")
def seg_base(tmp_path_factory):
    return make_tiny_seg(str(tmp_path_factory.mktemp("seg_base")))


@pytest.fixture
def seg(seg_base, tmp_path):
    """A private copy of the tiny seg data and its configs, to break."""
    data = str(tmp_path / "data")
    shutil.copytree(seg_base["data"], data)
    paths = {"data": data}
    for key in ("teacher", "student", "feat"):
        with open(seg_base[key]) as f:
            text = f.read().replace(seg_base["data"], data)
        paths[key] = str(tmp_path / os.path.basename(seg_base[key]))
        with open(paths[key], "w") as f:
            f.write(text)
    return paths


def run(name, *args, tmp):
    done = run_process(name, *args, "--save_dir", os.path.join(tmp, "out"), timeout=TIMEOUT, env=ENV)
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.returncode, done.stderr


def train(config, tmp):
    return run("train", "--config", config, tmp=tmp)


def one_error(stderr):
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def label_path(data, name=BAD):
    return os.path.join(data, "labels", name)


def image_path(data, name=BAD):
    return os.path.join(data, "images", name)


# ------------------------------------------------------------------ segmentation, through the commands

def test_missing_image_in_the_train_list(seg, tmp_path):
    os.remove(image_path(seg["data"]))
    code, err = train(seg["teacher"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert image_path(seg["data"]) in line and "do not exist" in line and "train.txt" in line


def truncate(path, keep):
    """Cut a file to a share of its bytes, as an interrupted copy would."""
    with open(path, "rb") as f:
        head = f.read()
    with open(path, "wb") as f:
        f.write(head[:int(len(head) * keep)])


def test_truncated_png_in_the_train_list(seg, tmp_path):
    path = image_path(seg["data"])
    truncate(path, keep=1 / 3)
    code, err = train(seg["teacher"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert path in line and "could not be decoded" in line and "remove its line" in line


def test_label_values_outside_num_classes(seg, tmp_path):
    path = label_path(seg["data"])
    label = np.asarray(Image.open(path)).copy()
    label[label > 0] = 7
    Image.fromarray(label).save(path)
    code, err = train(seg["teacher"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert path in line and "value(s) 7" in line and "[0, 2)" in line and "ignore_index 255" in line
    assert not os.path.exists(tmp_path / "out" / "iter_4")


def test_label_values_are_checked_for_evaluation_too(seg):
    val = os.path.join(seg["data"], "val.txt")
    with open(val) as f:
        label = os.path.join(seg["data"], f.readline().split()[1])
    array = np.asarray(Image.open(label)).copy()
    array[:3, :3] = 9
    array[3:6, :3] = 255  # ignore_index: allowed
    Image.fromarray(array).save(label)
    cfg = {"val_dataset": {"type": "Dataset", "dataset_root": seg["data"], "val_path": val, "num_classes": 2,
                           "mode": "val", "transforms": [{"type": "Normalize"}]}}
    dataset = SegTask().build_dataset(cfg, "val")
    with pytest.raises(ConfigError) as e:
        dataset[0]
    assert label in str(e.value) and "value(s) 9 " in str(e.value) and "val_dataset" in str(e.value)
    assert dataset[1]["label"].shape[-2:] == dataset[1]["img"].shape[-2:]  # the other sample is fine


def test_label_smaller_than_its_image_is_an_error_not_a_hang(seg, tmp_path):
    path = label_path(seg["data"])
    label = np.asarray(Image.open(path))
    Image.fromarray(label[:128, :128]).save(path)
    code, err = train(seg["teacher"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert image_path(seg["data"]) in line and path in line and "256x256" in line and "128x128" in line
    assert "must have its image's size" in line


def test_empty_train_list(seg, tmp_path):
    train_list = os.path.join(seg["data"], "train.txt")
    open(train_list, "w").close()
    code, err = train(seg["teacher"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert "holds no samples" in line and train_list in line


def test_teacher_with_another_class_count(seg, tmp_path):
    with open(seg["teacher"]) as f:
        cfg = yaml.safe_load(f)
    cfg["model"]["num_classes"] = 3  # the model only: the data stay as they are
    teacher = write_yaml(str(tmp_path / "teacher3.yml"), cfg)
    code, err = run("distill_train", "--teacher_config", teacher, "--student_config", seg["student"],
                    "--allow_untrained_teacher", "--iters", 1, tmp=tmp_path)
    assert code == 2
    line = one_error(err)
    assert "3 classes" in line and "student 2" in line and "num_classes" in line


def test_distill_pair_on_a_layer_that_never_runs(seg, tmp_path):
    # ResNet_vd's ConvBNLayer holds an average pool that only its vd-mode layers call
    student = tmp_path / "unused.yml"
    with open(seg["feat"]) as f:
        student.write_text(f.read().replace("student: backbone.bb_2_1", "student: backbone.conv1_1._pool2d_avg"))
    code, err = run("distill_train", "--teacher_config", seg["teacher"], "--student_config", student,
                    "--allow_untrained_teacher", "--iters", 1, tmp=tmp_path)
    assert code == 2
    line = one_error(err)
    assert "'cwd_stage2'" in line and "backbone.conv1_1._pool2d_avg" in line and "did not run" in line


# ------------------------------------------------------------------ the loader, directly

class Listed(paddle.io.Dataset):
    """Samples named by a file list; `fail(index)` decides which raise."""

    def __init__(self, n=6, fail=lambda i: None):
        self.file_list = [[f"img_{i}.png", f"lab_{i}.png"] for i in range(n)]
        self.fail = fail

    def __len__(self):
        return len(self.file_list)

    def __getitem__(self, index):
        self.fail(index)
        return np.full([3, 4 if index != 4 else 5], index, dtype="float32")


def drain(stream, batches):
    """Read `batches` batches in a thread; the error it raised (a hang fails the test)."""
    result = {}

    def read():
        try:
            for _ in range(batches):
                next(stream)
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "reading the batches hung"
    return result.get("error")


def test_an_exception_in_the_loader_thread_is_raised_in_the_main_thread():
    def fail(index):
        if index == 3:
            raise RuntimeError("boom")

    error = drain(BatchStream(Listed(fail=fail), 2, shuffle=False), 3)
    assert isinstance(error, ConfigError)
    assert "img_3.png" in str(error) and "lab_3.png" in str(error) and "RuntimeError: boom" in str(error)


def test_samples_that_do_not_stack_name_the_batch():
    error = drain(BatchStream(Listed(), 2, shuffle=False), 3)
    assert isinstance(error, ConfigError)
    assert "into one batch" in str(error) and "img_4.png" in str(error) and "img_5.png" in str(error)


def test_an_unused_layer_names_the_pair():
    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.body, self.spare, self.head = paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 4), paddle.nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x))

    distiller = Distiller(Net(), Net(), [{"name": "feat", "student": "spare", "teacher": "body", "loss": "L2Loss"}])
    with pytest.raises(ConfigError) as e:
        distiller(paddle.randn([2, 4]))
    assert "'feat'" in str(e.value) and "'spare'" in str(e.value) and "did not run" in str(e.value)


# ------------------------------------------------------------------ classification file lists

@pytest.fixture(scope="module")
def cls_base(tmp_path_factory):
    return make_tiny_cls(str(tmp_path_factory.mktemp("cls_base")), per_class=2)


@pytest.fixture
def cls(cls_base, tmp_path):
    data = str(tmp_path / "data")
    shutil.copytree(cls_base["data"], data)
    with open(cls_base["teacher"]) as f:
        text = f.read().replace(cls_base["data"], data)
    config = tmp_path / "teacher.yml"
    config.write_text(text)
    with open(os.path.join(data, "train_list.txt")) as f:
        lines = f.read().splitlines()
    return {"data": data, "config": str(config), "lines": lines}


def write_list(cls, lines):
    with open(os.path.join(cls["data"], "train_list.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def test_cls_missing_image_in_the_file_list(cls, tmp_path):
    missing = os.path.join(cls["data"], cls["lines"][1].split()[0])
    os.remove(missing)
    code, err = train(cls["config"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert missing in line and "do not exist" in line


def test_cls_label_out_of_range(cls, tmp_path):
    lines = list(cls["lines"])
    lines[1] = lines[1].rsplit(None, 1)[0] + " 12"
    write_list(cls, lines)
    code, err = train(cls["config"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert "[12]" in line and "[0, 9]" in line and "train_list.txt" in line


def test_cls_truncated_image(cls, tmp_path):
    bad = os.path.join(cls["data"], cls["lines"][1].split()[0])
    truncate(bad, keep=1 / 2)
    code, err = train(cls["config"], tmp_path)
    assert code == 2
    line = one_error(err)
    assert bad in line and "Cannot decode" in line
