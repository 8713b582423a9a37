"""Detection configs (ppdet yaml), their translation for the trainer, data checks and the VOC/COCO metrics."""
import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from slim.distill.errors import ConfigError
from slim.apps import launch
from slim.engine.optim import build_lr_scheduler
from slim.tasks.det import data as det_data
from slim.tasks.det.metrics import COCOEvaluator, VOCEvaluator, average_precision
from slim.tasks.det.settings import PiecewiseFactor
from tests.helpers.cli import ROOT
from tests.helpers.det_fixtures import dataset_yaml, prepare_trees

TEACHER = os.path.join(ROOT, "configs/det/yolov3_r34_trees_teacher.yml")
STUDENT = os.path.join(ROOT, "configs/det/yolov3_mobilenet_v1_trees_student.yml")
OBJ_STUDENT = os.path.join(ROOT, "configs/det/yolov3_mobilenet_v1_trees_student_objdistill.yml")


@pytest.fixture(scope="module")
def trees_data(tmp_path_factory):
    return prepare_trees(str(tmp_path_factory.mktemp("det_cfg")))


def on(data):
    """-o overrides pointing the shipped configs at a prepared trees folder."""
    return [f"TrainDataset.dataset_dir={data}", f"EvalDataset.dataset_dir={data}"]


def test_shipped_configs_are_ppdet_yaml_and_pick_the_detection_task(trees_data):
    task, cfg = launch.load_task_config(TEACHER, on(trees_data))
    assert task.name == "det"
    assert cfg["TrainDataset"]["type"] == "VOCDataSet"  # `!VOCDataSet` tag
    assert cfg["ResNet"]["depth"] == 34 and cfg["architecture"] == "YOLOv3"  # from `_BASE_` files
    s = task.training_settings(cfg)
    assert s["batch_size"] == 8 and s["epochs"] == 120 and s["reference_batch_size"] == 8
    assert s["optimizer"] == {"type": "Momentum", "momentum": 0.9, "weight_decay": 0.0005}
    lr = s["lr_scheduler"]
    assert lr["warmup_iters"] == 100 and lr["warmup_start_lr"] == 0.0 and lr["learning_rate"] == 0.001
    # 81 tiles // batch 8 = 10 iterations per epoch; milestones 96, 108 epochs; scalar gamma 0.1 -> 0.1, 0.01
    f = lr["lr_lambda"]
    assert (f.boundaries, f.factors) == ([960, 1080], [1.0, 0.1, 0.01])
    _, obj = launch.load_task_config(OBJ_STUDENT, on(trees_data))
    assert [p["loss"]["type"] for p in obj["distill"]] == ["YOLOv3DistillLoss"] * 3


def test_flags_and_overrides_win_over_the_ppdet_sections(trees_data):
    task, cfg = launch.load_task_config(STUDENT, on(trees_data) + [
        "TrainReader.batch_size=4", "iters=30", "learning_rate=0.01",
        "LearningRate.schedulers.0.type=CosineDecay", "LearningRate.schedulers.0.max_epochs=10"])
    s = task.training_settings(cfg)
    assert s["batch_size"] == 4 and s["iters"] == 30 and "epochs" not in s
    assert s["reference_batch_size"] == 8  # the lr was set for 8: the trainer scales it x0.5
    lr = s["lr_scheduler"]
    # 81 // 4 = 20 iterations per epoch; the cosine runs 10 epochs after the 100 warm-up iterations
    assert lr["type"] == "CosineAnnealingDecay" and lr["T_max"] == 10 * 20 - 100 and lr["learning_rate"] == 0.01
    schedule = build_lr_scheduler(s, 30, 20, lr_scale=0.5, warmup_scale=2.0)
    assert schedule.warmup_steps == 200 and schedule.end_lr == pytest.approx(0.005)


def test_reference_batch_from_the_config_batch_and_its_gpu_count():
    from slim.tasks.det.settings import reference_batch
    assert reference_batch({"TrainReader": {"batch_size": 8}}) == 8
    assert reference_batch({"TrainReader": {"batch_size": 8}, "reference_gpus": 4}) == 32  # ppdet's 8 x 4 GPUs
    assert reference_batch({"TrainReader": {"batch_size": 8}, "reference_batch_size": 64}) == 64


def test_piecewise_schedule_values_through_the_engine():
    s = {"lr_scheduler": {"type": "LambdaDecay", "learning_rate": 0.1,
                          "lr_lambda": PiecewiseFactor([3, 5], [1.0, 0.1, 0.01])}}
    schedule = build_lr_scheduler(s, 8, 1)
    values = []
    for _ in range(7):
        values.append(schedule())
        schedule.step()
    np.testing.assert_allclose(values, [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_unknown_top_level_key_names_the_nearest(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(f"_BASE_: ['{STUDENT}']\nTrainReder: {{batch_size: 2}}\n")
    with pytest.raises(ConfigError, match="TrainReader"):
        launch.load_task_config(str(path))


def test_each_config_builds_in_its_own_ppdet_scope(trees_data):
    from ppdet.core.workspace import global_config
    before = {k: dict(v) if isinstance(v, dict) else v for k, v in global_config.items()}
    t_task, t_cfg = launch.load_task_config(TEACHER, on(trees_data))
    s_task, s_cfg = launch.load_task_config(STUDENT, on(trees_data))
    teacher, student = t_task.build_model(t_cfg), s_task.build_model(s_cfg)
    assert type(teacher.backbone).__name__ == "ResNet" and type(student.backbone).__name__ == "MobileNet"
    # the teacher's sections did not leak into ppdet's global config (PaddleDetection #5976)
    after = {k: dict(v) if isinstance(v, dict) else v for k, v in global_config.items()}
    assert after == before and "architecture" not in global_config
    # the tree anchors and one class reached both heads; objectness biases start at logit(0.01)
    for model in (teacher, student):
        assert model.yolo_head.num_classes == 1 and model.yolo_head.anchors[2][0] == [16, 17]
        bias = model.yolo_head.yolo_outputs[0].bias.numpy().reshape(3, 6)
        np.testing.assert_allclose(bias[:, 4], np.log(0.01 / 0.99), rtol=1e-6)


def test_teacher_and_student_must_share_the_class_list(trees_data, tmp_path):
    data = str(tmp_path / "other")
    shutil.copytree(trees_data, data)
    with open(os.path.join(data, "label_list.txt"), "w") as f:
        f.write("Tree\nShrub\n")
    task, cfg = launch.load_task_config(STUDENT, on(trees_data))
    _, teacher_cfg = launch.load_task_config(TEACHER, on(data) + ["num_classes=2"])
    with pytest.raises(ConfigError, match=r"teacher's classes \(Tree, Shrub\) differ from the student's \(Tree\)"):
        task.check_teacher_compatible(cfg, teacher_cfg)
    _, wrong_n = launch.load_task_config(TEACHER, on(trees_data) + ["num_classes=3"])
    with pytest.raises(ConfigError, match="num_classes is 3"):
        task.build_model(wrong_n)


# ----- data checks ------------------------------------------------------------------------------
def small_voc(trees_data, tmp_path, edit):
    """A copy of two tiles whose first xml is changed by edit(root element)."""
    data = str(tmp_path / "voc")
    os.makedirs(os.path.join(data, "JPEGImages"))
    os.makedirs(os.path.join(data, "Annotations"))
    shutil.copy(os.path.join(trees_data, "label_list.txt"), data)
    with open(os.path.join(trees_data, "val_tiny.txt")) as f:
        pairs = [line.split() for line in f if line.strip()]
    for img, xml in pairs:
        shutil.copy(os.path.join(trees_data, img), os.path.join(data, img))
        shutil.copy(os.path.join(trees_data, xml), os.path.join(data, xml))
    first = os.path.join(data, pairs[0][1])
    tree = ET.parse(first)
    edit(tree.getroot())
    tree.write(first)
    with open(os.path.join(data, "list.txt"), "w") as f:
        f.write("".join(f"{i} {x}\n" for i, x in pairs))
    return data, first


def load(data):
    det_data._CACHE.clear()
    return det_data.load_records({"TrainDataset": dataset_yaml(data, "list.txt")}, "train")


def test_xml_that_does_not_parse_is_named(trees_data, tmp_path):
    data, first = small_voc(trees_data, tmp_path, lambda root: None)
    with open(first, "a") as f:
        f.write("<object><name>Tree")
    with pytest.raises(ConfigError, match=f"{first} is not valid xml"):
        load(data)


def test_class_missing_from_label_list_is_named(trees_data, tmp_path):
    data, first = small_voc(trees_data, tmp_path, lambda root: setattr(root.find("object/name"), "text", "Palm"))
    with pytest.raises(ConfigError, match=r"class 'Palm', which is not in .*label_list.txt \(Tree\)"):
        load(data)


def test_boxes_outside_the_image_are_clipped_or_dropped_and_counted(trees_data, tmp_path, capsys):
    def edit(root):
        boxes = root.findall("object/bndbox")
        boxes[0].find("xmin").text, boxes[0].find("xmax").text = "-20", "30"  # partly outside: clipped
        boxes[1].find("xmin").text, boxes[1].find("xmax").text = "300", "320"  # outside: zero area, dropped
        boxes[2].find("ymax").text = boxes[2].find("ymin").text  # zero height: dropped
    data, first = small_voc(trees_data, tmp_path, edit)
    n_before = sum(len(ET.parse(os.path.join(data, "Annotations", x)).getroot().findall("object"))
                   for x in os.listdir(os.path.join(data, "Annotations")))
    loaded = load(data)
    out = capsys.readouterr().out
    assert "1 box(es) reaching outside the image were clipped to it, 2 of zero area" in out and first in out
    boxes = loaded["records"][0]["gt_bbox"]
    assert boxes[:, 0].min() >= 0 and boxes[0, 0] == 0 and boxes[0, 2] == 30
    assert sum(len(r["gt_bbox"]) for r in loaded["records"]) == n_before - 2


def test_images_without_boxes_are_valid(trees_data, tmp_path):
    data, _ = small_voc(trees_data, tmp_path, lambda root: [root.remove(o) for o in root.findall("object")])
    records = load(data)["records"]
    assert len(records) == 2 and records[0]["gt_bbox"].shape == (0, 4)
    assert "1 without boxes" in load(data)["stats"].describe("x")


# ----- metrics ----------------------------------------------------------------------------------
def test_voc_map_per_class_and_mean_agree_with_ppdet():
    rng = np.random.RandomState(0)
    names = ["a", "b", "c"]  # "b" has no ground truth: left out of the mean, like ppdet
    for map_type in ("11point", "integral"):
        ev = VOCEvaluator(names, map_type=map_type)
        for _ in range(5):
            gt = rng.uniform(0, 100, (6, 2))
            gt_box = np.concatenate([gt, gt + rng.uniform(10, 40, (6, 2))], 1)
            labels = rng.choice([0, 2], 6)
            pred_box = gt_box + rng.normal(0, 4, gt_box.shape)
            pred = np.concatenate([labels[:, None], rng.uniform(0, 1, (6, 1)), pred_box], 1)
            pred = np.concatenate([pred, [[1, 0.9, 0, 0, 10, 10], [-1, 0.0, 0, 0, 0, 0]]])  # a false "b"; a fake
            ev.update(pred, {"gt_bbox": gt_box, "gt_class": labels[:, None], "difficult": np.zeros((6, 1))})
        m = ev.result()
        assert list(m["class_AP"]) == ["a", "c"]
        assert m["mAP"] == pytest.approx(np.mean(list(m["class_AP"].values())), abs=1e-12)
        assert 0 < m["mAP"] < 1
    assert average_precision([(0.9, 1), (0.8, 0), (0.7, 1)], 2, "integral") == pytest.approx(1 * 0.5 + 2 / 3 * 0.5)
    assert average_precision([(0.9, 1)], 1, "11point") == pytest.approx(1.0)
    assert average_precision([], 3) == 0.0 and average_precision([(0.5, 0)], 0) is None


def test_perfect_predictions_score_one_in_voc_and_coco(trees_data, tmp_path):
    det_data._CACHE.clear()
    voc = det_data.load_records({"TrainDataset": dataset_yaml(trees_data, "val_tiny.txt")}, "train")
    # the same tiles as a COCO json dataset
    images, annotations = [], []
    for i, rec in enumerate(voc["records"]):
        images.append({"id": i, "file_name": os.path.relpath(rec["im_file"], trees_data), "width": int(rec["w"]),
                       "height": int(rec["h"])})
        for box in rec["gt_bbox"]:
            x1, y1, x2, y2 = map(float, box)
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 7, "iscrowd": 0,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
    anno = tmp_path / "val.json"
    anno.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 7, "name": "Tree"}]}))
    coco = det_data.load_records({"EvalDataset": {"type": "COCODataSet", "dataset_dir": trees_data, "image_dir": "",
                                                  "anno_path": str(anno)}}, "val")
    assert coco["names"] == ["Tree"] and len(coco["records"]) == len(voc["records"])
    voc_ev = VOCEvaluator(["Tree"])
    coco_ev = COCOEvaluator(coco["anno_path"], coco["clsid2catid"], coco["names"])
    for rec, crec in zip(voc["records"], coco["records"]):
        pred = np.concatenate([np.zeros((len(rec["gt_bbox"]), 1)), np.ones((len(rec["gt_bbox"]), 1)),
                               rec["gt_bbox"]], 1)
        voc_ev.update(pred, rec)
        coco_ev.update(pred, crec)
    assert voc_ev.result()["mAP"] == pytest.approx(1.0)
    result = coco_ev.result()
    assert result["mAP"] == pytest.approx(1.0) and result["mAP50"] == pytest.approx(1.0)
    assert "COCO" in coco_ev.lines(result)[0]

    # the same json trains: samples and YOLOv3 targets from a COCODataSet section
    from tests.helpers.det_fixtures import base_config
    cfg = base_config(trees_data)
    cfg["TrainDataset"] = {"type": "COCODataSet", "dataset_dir": trees_data, "image_dir": "", "anno_path": str(anno)}
    from slim.tasks.det import Task
    task = Task()
    dataset = task.build_dataset(cfg, "train")
    batch = task.collate_fn("train")([dataset[0], dataset[1]])
    assert list(batch["image"].shape) == [2, 3, 64, 64] and "target2" in batch


def test_cosine_holds_its_minimum_when_the_run_outlasts_max_epochs(trees_data):
    # paddle's CosineAnnealingDecay climbs back to the base lr after T_max; ppdet's CosineDecay stays at
    # its minimum. A 40-epoch cosine (10 iterations per epoch) run for 600 iterations went 0 -> 0.001 again.
    task, cfg = launch.load_task_config(STUDENT, on(trees_data) + [
        "iters=60", "LearningRate.schedulers.0.type=CosineDecay", "LearningRate.schedulers.0.max_epochs=3",
        "LearningRate.schedulers.0.min_lr_ratio=0.1", "LearningRate.schedulers.1.steps=5"])
    s = task.training_settings(cfg)  # 10 iterations per epoch: 30 - 5 warm-up = 25 cosine iterations
    schedule = build_lr_scheduler(s, 60, 10)
    values = []
    for _ in range(60):
        values.append(schedule())
        schedule.step()
    base = s["lr_scheduler"]["learning_rate"]
    assert values[5] == pytest.approx(base) and values[30] == pytest.approx(0.1 * base)
    assert all(a >= b - 1e-12 for a, b in zip(values[5:], values[6:]))  # never climbs back
    np.testing.assert_allclose(values[30:], 0.1 * base)
    # a run within max_epochs keeps paddle's CosineAnnealingDecay
    task, cfg = launch.load_task_config(STUDENT, on(trees_data) + [
        "iters=20", "LearningRate.schedulers.0.type=CosineDecay", "LearningRate.schedulers.0.max_epochs=3"])
    assert task.training_settings(cfg)["lr_scheduler"]["type"] == "CosineAnnealingDecay"
