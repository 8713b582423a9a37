"""Object detection with PaddleDetection (ppdet 2.6) models, data operators, losses and post-processing.

Configs are PaddleDetection yaml (`_BASE_`, `architecture:`, `YOLOv3:`, `TrainReader:`, `LearningRate:`,
`OptimizerBuilder:`, `!VOCDataSet` tags, ...), plus this package's `distill:` pairs in the student config:

    distill:
      - {name: l2_out0, student: yolo_head.yolo_output.0, teacher: yolo_head.yolo_output.0, loss: L2Loss}

The model's train-mode forward returns ppdet's loss dict; its terms (loss_xy, loss_wh, loss_obj, loss_cls,
...) are the task loss. In eval mode it returns `bbox` ([M, 6]: label, score, x1, y1, x2, y2 in original
image coordinates) and `bbox_num`. The teacher runs its feature path (features.py).
"""
import copy
import os
from collections import OrderedDict

import numpy as np
import paddle

from slim.distill.errors import ConfigError
from slim.tasks.base import TaskBase
from . import data as det_data
from . import settings as det_settings
from .features import install_feature_forward
from .metrics import COCOEvaluator, VOCEvaluator
from .workspace import PPDET_KEYS, build_architecture, registered_names

MODEL_INPUT_KEYS = ("image", "im_shape", "scale_factor")
#: set by a slim config (PPYOLOEDistill: ppdet's alpha 0.125) in the student config it returns
DET_LOSS_SCALE_KEY = "det_loss_scale"


def matches(cfg):
    """A PaddleDetection config: it names an `architecture`."""
    return isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str)


class DetLoss:
    """ppdet's loss dict -> the named terms (their sum is ppdet's `loss`), each times `scale` (PPYOLOEDistill
    scales the detection loss with the distillation terms, as ppdet's PPYOLOEDistillModel does)."""

    def __init__(self, scale=1.0):
        self.use_terms = None
        self.scale = float(scale)

    def __call__(self, output, batch):
        if not isinstance(output, dict) or "loss" not in output:
            raise ConfigError("The detector did not return its loss dict: it must be in train mode and fed "
                              "the training targets (TrainReader.batch_transforms, e.g. Gt2YoloTarget).")
        terms = OrderedDict((k, v) for k, v in output.items() if k != "loss" and isinstance(v, paddle.Tensor)
                            and v.size == 1)
        if self.use_terms is None:  # once: do the named terms add up to ppdet's total?
            total = float(output["loss"])
            parts = sum(float(v) for v in terms.values()) if terms else None
            self.use_terms = parts is not None and abs(parts - total) <= 1e-4 * max(1.0, abs(total))
        if self.use_terms:
            out = OrderedDict((k, v.reshape([])) for k, v in terms.items())
        else:
            out = OrderedDict(det_loss=output["loss"].reshape([]))
        if self.scale != 1.0:
            out = OrderedDict((k, v * self.scale) for k, v in out.items())
        return out


def init_objectness_prior(model, prob):
    """Start every objectness logit of a YOLOv3 head at logit(prob) (bias of the output convolutions).

    ppdet initialises these biases at 0, i.e. p(object) = 0.5 in each of the thousands of cells; from
    scratch, the objectness loss then dominates for hundreds of iterations while the biases walk down.
    With `obj_prior_prob: 0.01` training starts where most cells are background (as RetinaNet's prior)."""
    if not 0 < prob < 1:
        raise ConfigError(f"obj_prior_prob must be in (0, 1), got {prob}")
    head = getattr(model, "yolo_head", None)
    if head is None or not hasattr(head, "yolo_outputs"):
        raise ConfigError("obj_prior_prob applies to YOLOv3 heads (yolo_head.yolo_output.N) only.")
    value = float(np.log(prob / (1 - prob)))
    for i, conv in enumerate(head.yolo_outputs):
        na = len(head.anchors[i])
        bias = conv.bias.numpy().copy()
        start = na if head.iou_aware else 0
        per_anchor = bias[start:].reshape(na, -1)
        per_anchor[:, 4] = value
        bias[start:] = per_anchor.reshape(-1)
        conv.bias.set_value(bias)


def _weights_file(path):
    """ppdet's cache path of a weights URL: the .pdparams itself, or the folder an archive unpacked to."""
    if path and os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".pdparams"))
        return os.path.join(path, "model.pdparams" if "model.pdparams" in found else found[0]) if found else None
    if path and not os.path.exists(path) and os.path.isfile(path + ".pdparams"):
        return path + ".pdparams"
    return path


def _quiet(match):
    """ppdet's matcher logs every unused name at INFO on stdout; this package logs them itself."""
    def quiet(own, state):
        import logging
        logger = logging.getLogger("ppdet.utils.checkpoint")
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            return match(own, state)
        finally:
            logger.setLevel(level)
    return quiet


class DetExport(paddle.nn.Layer):
    """The deployed detector: image (N, 3, H, W), already resized and normalised -> (bbox, bbox_num), boxes
    in the input image's pixels (scale_factor 1)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        n = paddle.shape(image)[0]
        hw = paddle.cast(paddle.shape(image)[2:4], "float32")
        im_shape = paddle.expand(hw.reshape([1, 2]), [n, 2])
        scale_factor = paddle.ones([n, 2], dtype="float32")
        out = self.model({"image": image, "im_shape": im_shape, "scale_factor": scale_factor})
        return out["bbox"], out["bbox_num"]


class Task(TaskBase):
    name = "det"
    primary_metric = "mAP"

    def __init__(self):
        self._collate = {}
        self._notes = set()
        self._epoch = 0

    @property
    def config_keys(self):
        return tuple(PPDET_KEYS) + tuple(registered_names())

    def teacher_model_config(self, cfg):
        """ppdet's model sections (architecture and the classes it names), without readers, datasets,
        schedules or weight paths."""
        skip = ("Reader", "Dataset", "LearningRate", "OptimizerBuilder")
        kept = {k: v for k, v in cfg.items() if not any(k.endswith(s) for s in skip)
                and k not in ("epoch", "snapshot_epoch", "log_iter", "save_dir", "use_gpu", "use_xpu",
                              "print_flops", "metric", "map_type", "weights", "pretrain_weights", "slim",
                              "slim_method", "distill_loss", "distill", "iters", "epochs", "batch_size",
                              "optimizer", "lr_scheduler", "learning_rate", "_BASE_", "task")}
        return super().teacher_model_config(kept)

    def data_config(self, cfg):
        return {k: cfg.get(k) for k in ("TrainDataset", "TrainReader", "num_classes") if k in cfg}

    # ----- settings ---------------------------------------------------------------------------------
    def iters_per_epoch(self, cfg):
        from slim.engine import env
        n = len(det_data.load_records(cfg, "train")["records"])
        total = det_settings.per_process_batch(cfg) * env.world_size()
        return max(n // max(total, 1), 1)

    def training_settings(self, cfg):
        return det_settings.training_settings(cfg, self.iters_per_epoch(cfg))

    def _note(self, text):
        if text not in self._notes:
            self._notes.add(text)
            det_data._log(text)

    # ----- models -----------------------------------------------------------------------------------
    def num_classes(self, cfg):
        return cfg.get("num_classes")

    @staticmethod
    def _class_file(cfg, mode):
        """The file that names the classes of a dataset section (label list or COCO json), or None."""
        try:
            kind, ds = det_data.dataset_section(cfg, mode)
        except ConfigError:
            return None
        if kind == "VOCDataSet" and ds.get("label_list"):
            return det_data._join(ds.get("dataset_dir"), ds["label_list"])
        if kind == "COCODataSet" and ds.get("anno_path"):
            return det_data._join(ds.get("dataset_dir"), ds.get("anno_path"))
        return None

    def class_names(self, cfg, required=True):
        """The dataset's class names, or None. With required=False a dataset whose files are not on this
        machine gives None instead of an error (a teacher's config: only its model is used)."""
        for mode in ("train", "val"):
            if not required:
                path = self._class_file(cfg, mode)
                if path is None or not os.path.isfile(path):
                    continue
            names = det_data.class_names(cfg, mode)
            if names:
                return names
        test = cfg.get("TestDataset") or {}
        path = test.get("anno_path")
        if path and str(path).endswith(".txt"):
            path = det_data._join(test.get("dataset_dir"), path)
            if required or os.path.isfile(path):
                return det_data.read_label_list(path)
        return None

    def _model_cfg(self, cfg):
        """The config a model is built from: `num_classes` from the config, checked against the dataset's
        label list when that is on this machine, else taken from the label list."""
        cfg = copy.deepcopy(dict(cfg))
        names = self.class_names(cfg, required=cfg.get("num_classes") is None)
        if names is not None:
            det_data.check_num_classes(cfg, names, "the dataset's label list")
            cfg.setdefault("num_classes", len(names))
        if cfg.get("num_classes") is None:
            raise ConfigError("Set `num_classes:` (the number of object classes) in the config.")
        return cfg

    pretrained_key = "weights"

    def build_model(self, cfg):
        model = build_architecture(self._model_cfg(cfg))
        if cfg.get("obj_prior_prob"):
            init_objectness_prior(model, float(cfg["obj_prior_prob"]))
        return model

    def load_pretrained(self, model, cfg):
        """`pretrain_weights` (a local file or a URL, e.g. ImageNet backbone weights whose names carry no
        `backbone.` prefix), matched to the model as ppdet's load_pretrain_weight matches them: by name
        suffix, then shape."""
        path = cfg.get("pretrain_weights")
        if path:
            from ppdet.utils.checkpoint import match_state_dict
            self.load_matching_file(model, self._resolve(path), "pretrain_weights", match=_quiet(match_state_dict))

    def cached_weights(self, url):
        from ppdet.utils.download import WEIGHTS_HOME, map_path, parse_url
        path = _weights_file(map_path(parse_url(url), WEIGHTS_HOME))
        return path if path and os.path.isfile(path) else None

    def download_weights(self, url):
        """ppdet.utils.download.get_weights_path: into ~/.cache/paddle/weights, archives unpacked."""
        from ppdet.utils.download import get_weights_path
        return _weights_file(get_weights_path(url))

    @staticmethod
    def _resolve(path):
        """ppdet writes `-o weights=output/x/model_final` without the extension; accept both."""
        if path and not os.path.exists(path) and os.path.isfile(str(path) + ".pdparams"):
            return str(path) + ".pdparams"
        return path

    def local_weights(self, path, key):
        return super().local_weights(self._resolve(path), key)

    def pretrained_path(self, cfg):
        """`weights:` (ppdet's trained-model weights: read by eval, infer and for a teacher)."""
        return cfg.get("weights")

    def init_weights_path(self, cfg):
        """Training never starts from `weights:` (in ppdet it names the result, e.g. model_final);
        `pretrain_weights` (partial, by name and shape) is loaded by load_pretrained, --init_weights strictly."""
        return None

    def prepare_teacher_config(self, cfg, teacher_cfg):
        """Only the teacher's model is used: its dataset need not be on this machine. Its class count is
        its own `num_classes`, else its label list when present, else the student's."""
        teacher_cfg = dict(teacher_cfg)
        if teacher_cfg.get("num_classes") is None and self.class_names(teacher_cfg, required=False) is None:
            teacher_cfg["num_classes"] = self._model_cfg(cfg)["num_classes"]
            self._note(f"teacher config: no num_classes and no dataset on this machine; "
                       f"num_classes {teacher_cfg['num_classes']} taken from the student's")
        return teacher_cfg

    def default_pairs(self, cfg, teacher_cfg):
        """Two YOLOv3-family detectors and no pairs given: L2 on the maps of the YOLOv3 output convolutions
        (PaddleDetection's seed recipe: the maps that feed the YOLOv3 losses), weight 0.1 each."""
        if cfg.get("architecture") != "YOLOv3" or teacher_cfg.get("architecture") != "YOLOv3":
            return [], ""
        masks = (dict(cfg.get((cfg.get("YOLOv3") or {}).get("yolo_head") or "YOLOv3Head") or {})
                 .get("anchor_masks") or [[6, 7, 8], [3, 4, 5], [0, 1, 2]])
        pairs = [{"name": f"l2_out{i}", "student": f"yolo_head.yolo_output.{i}",
                  "teacher": f"yolo_head.yolo_output.{i}", "loss": "L2Loss", "weight": 0.1}
                 for i in range(len(masks))]
        names = ", ".join(f"yolo_head.yolo_output.{i}" for i in range(len(masks)))
        return pairs, (f"no distillation terms given (distill_loss, distill:, distill_config.py): using the YOLOv3 "
                       f"default, L2Loss on the head outputs {names}, weight 0.1 each")

    def slim_config(self, cfg, path):
        """PaddleDetection's `--slim_config` (slim_config.py): the teacher's config (the slim config, `_BASE_`
        resolved, method keys out), its weights (`pretrain_weights`), the method as pairs."""
        from . import slim_config
        return slim_config.load(path, cfg)

    def check_teacher_compatible(self, cfg, teacher_cfg):
        s_names = self.class_names(cfg)
        try:  # only the teacher's model is used: its dataset need not be on this machine
            t_names = self.class_names(teacher_cfg, required=False)
        except ConfigError:
            t_names = None
        if s_names is not None and t_names is not None and list(s_names) != list(t_names):
            raise ConfigError(
                f"The teacher's classes ({', '.join(t_names)}) differ from the student's ({', '.join(s_names)}): "
                f"distillation compares their class scores map by map, so both configs need the same label list "
                f"(same names, same order).")
        super().check_teacher_compatible(self._model_cfg(cfg) if s_names else cfg,
                                         self._model_cfg(teacher_cfg) if t_names else teacher_cfg)

    def prepare_pair(self, student, teacher, cfg, log=print):
        if install_feature_forward(teacher):
            log(f"teacher runs in eval mode under no_grad and stops at its head outputs "
                f"({type(teacher).__name__}: backbone -> neck -> head, no decoding or NMS)")
        else:
            log(f"teacher ({type(teacher).__name__}) runs its full eval forward (fed im_shape and scale_factor)")

    def example_inputs(self, cfg, input_shape=None):
        shape = list(input_shape or [1, 3, 256, 256])
        n, h, w = shape[0], shape[2], shape[3]
        return ({"image": paddle.randn(shape),
                 "im_shape": paddle.to_tensor(np.array([[h, w]] * n, dtype="float32")),
                 "scale_factor": paddle.ones([n, 2], dtype="float32")},)

    def run_name(self, cfg):
        arch = str(cfg.get("architecture", "det"))
        backbone = (cfg.get(arch) or {}).get("backbone")
        name = arch
        if isinstance(backbone, str):
            sec = cfg.get(backbone) or {}
            name += "_" + backbone + (str(sec["depth"]) if "depth" in sec else "")
            if sec.get("scale") not in (None, 1, 1.0):
                name += f"_x{sec['scale']}"
        return name.lower()

    # ----- data -------------------------------------------------------------------------------------
    def build_dataset(self, cfg, mode):
        dataset = det_data.build_dataset(cfg, mode)
        self._collate[mode] = det_data.build_collate(cfg, mode)
        if mode == "train":
            ops = [next(iter(t)) for t in (cfg.get("TrainReader") or {}).get("batch_transforms") or []
                   if isinstance(t, dict) and t]
            self._train_boxes = ("NormalizeBox" in ops, "BboxXYXY2XYWH" in ops)
        return dataset

    def collate_fn(self, mode):
        if mode not in self._collate:
            raise ConfigError(f"build_dataset(cfg, {mode!r}) must run before collate_fn({mode!r}).")
        return self._collate[mode]

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def model_inputs(self, batch, mode="train"):
        """The batch's tensors; in training also `epoch_id` (the trainer's epoch), as ppdet's trainer feeds
        it (PP-YOLOE's head picks its static or task-aligned assigner by it)."""
        inputs = {k: v for k, v in batch.items() if isinstance(v, paddle.Tensor)}
        if mode == "train":
            inputs["epoch_id"] = self._epoch
        return (inputs,), {}

    def distill_label(self, batch):
        """The training batch's targets for the losses that use them (FGD's boxes, LD's GFL targets): every
        tensor of the batch, with `gt_bbox` as pixel x1, y1, x2, y2 of the network input whatever the reader
        made of it (YOLOv3 readers normalise and centre it); all-zero rows stay padding; `epoch_id` (0-D int64,
        the trainer's epoch) for PP-YOLOE's logit terms, whose assignment depends on it."""
        targets = {k: v for k, v in batch.items() if isinstance(v, paddle.Tensor)}
        box = targets.get("gt_bbox")
        normalized, xywh = getattr(self, "_train_boxes", (False, False))
        if box is not None and box.ndim == 3 and (normalized or xywh):
            pad = (box.abs().sum(axis=-1, keepdim=True) > 0).astype(box.dtype)
            if xywh:
                box = paddle.concat([box[..., :2] - box[..., 2:] / 2, box[..., :2] + box[..., 2:] / 2], axis=-1)
            if normalized:
                hw = targets["im_shape"].astype(box.dtype) if "im_shape" in targets else paddle.to_tensor(
                    [list(batch["image"].shape[2:4])] * box.shape[0], dtype=box.dtype)
                box = box * paddle.concat([hw[:, 1:2], hw[:, 0:1], hw[:, 1:2], hw[:, 0:1]], axis=-1).unsqueeze(1)
            targets["gt_bbox"] = box * pad
        if "im_shape" not in targets and "image" in targets:
            n, _, h, w = targets["image"].shape
            targets["im_shape"] = paddle.to_tensor([[h, w]] * n, dtype="float32")
        targets["epoch_id"] = paddle.to_tensor(self._epoch, dtype="int64")  # PP-YOLOE's assigner epochs
        return targets

    def batch_size_of(self, batch):
        return int(batch["image"].shape[0])

    def build_task_loss(self, cfg):
        return DetLoss(cfg.get(DET_LOSS_SCALE_KEY) or 1.0)

    # ----- evaluation -------------------------------------------------------------------------------
    def make_evaluator(self, cfg, dataset):
        d = dataset.data
        if d["format"] == "coco":
            return COCOEvaluator(d["anno_path"], d["clsid2catid"], d["names"])
        iou = float(cfg.get("voc_eval_iou_thresh") or 0.5)
        return VOCEvaluator(d["names"], map_type=cfg.get("map_type") or "11point", overlap_thresh=iou)

    def predict_batch(self, model, batch):
        """[(M_i, 6) numpy array per image] for a collated eval batch."""
        out = model({k: batch[k] for k in MODEL_INPUT_KEYS})
        if not isinstance(out, dict) or "bbox" not in out:
            raise ConfigError("The detector returned no `bbox` in eval mode; evaluate a model in eval mode.")
        bbox, nums = out["bbox"].numpy(), out["bbox_num"].numpy().reshape(-1)
        preds, start = [], 0
        for n in nums:
            preds.append(bbox[start:start + int(n)])
            start += int(n)
        return preds

    def iter_predictions(self, model, dataset, cfg):
        bs = int((cfg.get("EvalReader") or {}).get("batch_size") or 8)
        collate = det_data.build_collate(cfg, "val")
        for start in range(0, len(dataset), bs):
            idx = list(range(start, min(start + bs, len(dataset))))
            batch = collate([dataset[i] for i in idx])
            for i, pred in zip(idx, self.predict_batch(model, batch)):
                yield i, pred

    def evaluate(self, model, dataset, cfg, log=print):
        evaluator = self.make_evaluator(cfg, dataset)
        with paddle.no_grad():
            for i, pred in self.iter_predictions(model, dataset, cfg):
                evaluator.update(pred, dataset.records[i])
        metrics = evaluator.result()
        for line in evaluator.lines(metrics):
            log(line)
        return metrics

    # ----- inference tools --------------------------------------------------------------------------
    def export_input_spec(self, cfg, input_shape=None):
        shape = list(input_shape or [None, 3, None, None])
        return [paddle.static.InputSpec(shape=shape, dtype="float32", name="image")]

    def export_model(self, model, cfg):
        return DetExport(model)

    def exported_model(self, run, cfg):
        """The exported detector (image -> boxes in the input's pixels, DetExport) called with ppdet's eval
        inputs: boxes are scaled back to the original image as ppdet's post-processing does (scale_factor)."""
        def detect(inputs):
            bbox, bbox_num = run([inputs["image"].numpy()])[:2]
            bbox, bbox_num = bbox.copy(), bbox_num.reshape(-1)
            scale = inputs["scale_factor"].numpy()  # (N, 2): (y, x)
            start = 0
            for i, n in enumerate(bbox_num):
                sy, sx = scale[i]
                bbox[start:start + int(n), 2:6] /= np.array([sx, sy, sx, sy], dtype=bbox.dtype)
                start += int(n)
            return {"bbox": paddle.to_tensor(bbox), "bbox_num": paddle.to_tensor(bbox_num)}
        return detect

    def predict_files(self, model, cfg, paths, out_dir, log=print, draw_threshold=0.5):
        """Draw boxes (label and score) with score >= draw_threshold on each image; write them to out_dir
        with a bbox.json of every detection."""
        import json

        from .visualize import draw_boxes
        names = self.class_names(cfg) or [str(i) for i in range(int(cfg.get("num_classes") or 1))]
        reader = det_data._reader(cfg, "test")
        transform = det_data._compose(reader["sample_transforms"], len(names), where="TestReader.sample_transforms")
        collate = det_data.EvalCollate(reader.get("batch_transforms") or [], len(names))
        os.makedirs(out_dir, exist_ok=True)
        results = []
        model.eval()
        with paddle.no_grad():
            for k, path in enumerate(paths):
                if not os.path.isfile(path):
                    raise ConfigError(f"Image {path} not found.")
                try:
                    sample = transform({"im_file": path, "im_id": np.array([k])})
                except Exception as e:
                    raise ConfigError(f"Cannot read image {path}: {type(e).__name__}: {e}") from None
                pred = self.predict_batch(model, collate([sample]))[0]
                pred = pred[pred[:, 0] >= 0]
                out_path = os.path.join(out_dir, os.path.basename(path))
                shown = draw_boxes(path, pred, names, draw_threshold, out_path)
                for label, score, x1, y1, x2, y2 in pred.tolist():
                    results.append({"image": path, "label": names[int(label)], "score": round(score, 5),
                                    "bbox": [round(v, 2) for v in (x1, y1, x2, y2)]})
                log(f"{path}: {shown} box(es) with score >= {draw_threshold} (of {len(pred)}) -> {out_path}")
        with open(os.path.join(out_dir, "bbox.json"), "w") as f:
            json.dump(results, f, indent=1)
        return out_dir

