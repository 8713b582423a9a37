"""Semantic segmentation with PaddleSeg models, datasets, transforms and losses (PaddleSeg yaml).

    model: {type: DeepLabV3P, num_classes: 2, backbone: {type: ResNet18_vd, output_stride: 16}}
    train_dataset: {type: Dataset, dataset_root: data/nuclei, train_path: data/nuclei/train.txt,
                    num_classes: 2, mode: train, transforms: [{type: RandomPaddingCrop, crop_size: [128, 128]},
                                                              {type: Normalize}]}
    val_dataset: {type: Dataset, ..., mode: val, transforms: [{type: Normalize}]}
    loss: {types: [{type: CrossEntropyLoss}], coef: [1]}
    distill_loss: {types: [{type: KLLoss}], coef: [3]}
    test_config: {is_slide: false}                   # or is_slide: true, crop_size: [w, h], stride: [w, h]
"""
import copy
import os
from collections import OrderedDict

import numpy as np
import paddle

from slim.distill.adaptor import LayerRef
from slim.distill.config import register_config_keys
from slim.distill.errors import ConfigError
from slim.tasks.base import TaskBase
from . import compat
from .datasets import check_dataset_root, no_downloads
from .metrics import ConfusionMatrix, eval_lines
from .samples import CheckedDataset

register_config_keys("val_transforms")


def _managers():
    import paddleseg  # noqa: F401  (registers the components)
    from paddleseg.cvlibs import manager
    compat.apply()
    return [manager.MODELS, manager.BACKBONES, manager.DATASETS, manager.TRANSFORMS, manager.LOSSES]


def is_seg_model(type_name):
    _managers()
    from paddleseg.cvlibs import manager
    return type_name in manager.MODELS.components_dict


def _component_class(type_name, kind="component"):
    for registry in _managers():
        if type_name in registry.components_dict:
            return registry[type_name]
    from paddleseg.cvlibs import manager
    registry = {"model": manager.MODELS, "dataset": manager.DATASETS, "transform": manager.TRANSFORMS,
                "loss": manager.LOSSES}.get(kind, manager.MODELS)
    raise ConfigError(f"PaddleSeg has no {kind} {type_name!r}. Known: "
                      f"{', '.join(sorted(registry.components_dict))}")


def build_component(cfg, kind="component"):
    """Recursively build `{type: NAME, **kwargs}`; nested dicts with `type` are built first."""
    cfg = copy.deepcopy(dict(cfg))
    if "type" not in cfg:
        raise ConfigError(f"Cannot build a {kind} from {cfg!r}: it has no `type`.")
    cls = _component_class(cfg.pop("type"), kind)
    kwargs = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and "type" in value:
            value = build_component(value)
        elif isinstance(value, list):
            value = [build_component(v) if isinstance(v, dict) and "type" in v else v for v in value]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"Could not build {cls.__name__} with {sorted(kwargs)}: {e}") from e


def _strip_pretrained(model_cfg):
    """The model section without its weights: this package loads them after building (slim/engine/weights.py),
    so that each load is logged and a failed download is one clear error, not a half-built model."""
    cfg = copy.deepcopy(dict(model_cfg))
    cfg.pop("pretrained", None)
    if isinstance(cfg.get("backbone"), dict):
        cfg["backbone"].pop("pretrained", None)
    return cfg


def _paddleseg_download_names(url):
    """(folder, file) under PaddleSeg's pretrained-model home, as paddleseg.utils.download_pretrained_model
    names them: an archive `.../name.tar.gz` -> name/model.pdparams; a file `.../folder/x.pdparams` ->
    folder/x.pdparams."""
    from urllib.parse import unquote
    url = unquote(url)
    last = url.rstrip("/").split("/")[-1]
    if last.endswith(("tgz", "tar.gz", "tar", "zip")):
        return last.split(".")[0], "model.pdparams"
    return url.rstrip("/").split("/")[-2], last


def seg_collate(samples):
    """Stack images and labels; keep trans_info per sample (needed to undo eval transforms)."""
    batch = {"img": paddle.to_tensor(np.stack([s["img"] for s in samples]).astype("float32"))}
    if samples[0].get("label") is not None:
        label = np.stack([np.asarray(s["label"]) for s in samples]).astype("int64")
        if label.ndim == 4:  # val mode adds a channel axis
            label = label[:, 0]
        batch["label"] = paddle.to_tensor(label)
    batch["trans_info"] = [s.get("trans_info", []) for s in samples]
    return batch


class SegLoss:
    """PaddleSeg's `loss: {types: [...], coef: [...]}`: loss i applies to model output i."""

    def __init__(self, loss_cfg):
        if not loss_cfg or "types" not in loss_cfg:
            raise ConfigError("The student config needs `loss: {types: [{type: CrossEntropyLoss}], coef: [1]}`.")
        types, coef = list(loss_cfg["types"]), list(loss_cfg.get("coef", [1.0] * len(loss_cfg["types"])))
        if len(types) != len(coef):
            raise ConfigError(f"loss: {len(types)} types but {len(coef)} coef values; give one coef per type.")
        self.losses = [build_component(t, "loss") for t in types]
        self.names = [t["type"] for t in types]
        self.coef = [float(c) for c in coef]

    def __call__(self, outputs, batch):
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        if len(outputs) < len(self.losses):
            raise ConfigError(f"loss has {len(self.losses)} types but the model returns {len(outputs)} "
                              f"output(s): one loss type per model output (main logit first).")
        label = batch["label"]
        terms = OrderedDict()
        for i, (name, loss, coef) in enumerate(zip(self.names, self.losses, self.coef)):
            key = name if name not in terms else f"{name}_{i}"
            terms[key] = coef * loss(outputs[i], label)
        return terms


class Task(TaskBase):
    name = "seg"
    primary_metric = "mIoU"

    def build_model(self, cfg):
        model_cfg = cfg.get("model") if "model" in cfg else cfg
        if not model_cfg:
            raise ConfigError("The config has no `model` section.")
        return build_component(_strip_pretrained(model_cfg), "model")

    def load_pretrained(self, model, cfg):
        """PaddleSeg's two keys, as PaddleSeg loads them (by name and shape): `model.backbone.pretrained` into
        the backbone (files of backbone weights, as PaddleSeg publishes them), then `model.pretrained` into
        the whole model."""
        model_cfg = cfg.get("model") if "model" in cfg else cfg
        backbone_weights = (model_cfg.get("backbone") or {}).get("pretrained") if isinstance(
            model_cfg.get("backbone"), dict) else None
        if backbone_weights:
            if getattr(model, "backbone", None) is None:
                raise ConfigError("model.backbone.pretrained is set but the model has no `backbone` sublayer.")
            self.load_matching_file(model.backbone, backbone_weights, "model.backbone.pretrained")
        super().load_pretrained(model, cfg)

    def cached_weights(self, url):
        from paddleseg.utils.env import seg_env
        folder, name = _paddleseg_download_names(url)
        path = os.path.join(seg_env.PRETRAINED_MODEL_HOME, folder, name)
        return path if os.path.isfile(path) else None

    def download_weights(self, url):
        """paddleseg.utils.download_pretrained_model: into ~/.paddleseg/pretrained_model (SEG_HOME), archives
        unpacked."""
        from paddleseg.utils.env import seg_env
        from paddleseg.utils.utils import download_pretrained_model
        os.makedirs(seg_env.PRETRAINED_MODEL_HOME, exist_ok=True)  # its lock file goes there
        return download_pretrained_model(url)

    def logits_ref(self, cfg):
        return LayerRef("$output", idx=0)

    def example_inputs(self, cfg, input_shape=None):
        return (paddle.randn(list(input_shape or [1, 3, 256, 256])),)

    # ----- data -----------------------------------------------------------------------------------
    def build_dataset(self, cfg, mode):
        key = f"{mode}_dataset"
        ds_cfg = cfg.get(key)
        if not ds_cfg:
            raise ConfigError(f"The config has no `{key}` section (needed for {mode}).")
        ds_cfg = dict(ds_cfg)
        ds_cfg.setdefault("mode", mode)
        if "type" not in ds_cfg:
            raise ConfigError(f"{key} has no `type` (e.g. OpticDiscSeg, Cityscapes, ADE20K, PascalVOC, Dataset).")
        cls = _component_class(ds_cfg["type"], "dataset")
        # Datasets are read from a local dataset_root only: check the layout the class reads (a clear
        # error naming it), and never let a paddleseg dataset download its archive.
        check_dataset_root(ds_cfg, mode, key, cls)
        try:
            with no_downloads(cls):
                dataset = build_component(ds_cfg, "dataset")
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{key}: {e}. Prepare the data first (e.g. `python tools/prepare_data.py nuclei "
                              f"--out data/nuclei`) or fix dataset_root / {mode}_path.") from None
        source = ds_cfg.get(f"{str(ds_cfg['mode']).lower()}_path") or ds_cfg.get("dataset_root")
        if len(dataset) == 0:
            raise ConfigError(f"{key} holds no samples: its file list ({source}) is empty. Add one 'image label' "
                              f"line per sample (paths relative to dataset_root), or point {key} at another list.")
        # each sample is checked as it is read: files that do not decode, a label of another size than its
        # image, label values outside [0, num_classes) (one clear error naming the files, in any thread)
        return CheckedDataset(dataset, key, source=source)

    def collate_fn(self, mode):
        return seg_collate

    def model_inputs(self, batch, mode="train"):
        return (batch["img"],), {}

    def distill_label(self, batch):
        return batch.get("label")

    def batch_size_of(self, batch):
        return int(batch["img"].shape[0])

    # ----- loss and evaluation --------------------------------------------------------------------
    def build_task_loss(self, cfg):
        return SegLoss(cfg.get("loss"))

    def predict(self, model, img, trans_info, cfg):
        """(pred (1, 1, h, w) int32 at the original size, logits) for one image."""
        from paddleseg.core.infer import inference
        test_cfg = dict(cfg.get("test_config") or {})
        return inference(model, img, trans_info=trans_info, is_slide=bool(test_cfg.get("is_slide", False)),
                         crop_size=test_cfg.get("crop_size"), stride=test_cfg.get("stride"))

    def evaluate(self, model, dataset, cfg, log=print):
        num_classes = getattr(dataset, "num_classes", None) or (cfg.get("model") or {}).get("num_classes")
        cm = ConfusionMatrix(num_classes, getattr(dataset, "ignore_index", 255))
        for i in range(len(dataset)):
            batch = seg_collate([dataset[i]])
            pred, _ = self.predict(model, batch["img"], batch["trans_info"][0], cfg)
            cm.update(pred.numpy(), batch["label"].numpy())
        metrics = cm.metrics()
        for line in eval_lines(metrics, len(dataset)):
            log(line)
        return metrics

    # ----- inference tools ------------------------------------------------------------------------
    def export_input_spec(self, cfg, input_shape=None):
        shape = list(input_shape or [None, 3, None, None])
        return [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]

    def export_model(self, model, cfg):
        return SegLogits(model)

    def exported_model(self, run, cfg):
        # PaddleSeg's inference() reads logits[0] of the model's output list
        exported = super().exported_model(run, cfg)
        return lambda img: [exported(img)]

    def predict_files(self, model, cfg, paths, out_dir, log=print):
        """Pseudo-colour masks in out_dir/pseudo_color_prediction, overlays in out_dir/added_prediction."""
        import cv2
        from paddleseg.transforms import Compose
        from paddleseg.utils import visualize

        transforms = Compose([build_component(t, "transform") for t in
                              (cfg.get("val_dataset") or {}).get("transforms") or [{"type": "Normalize"}]])
        num_classes = self.num_classes(cfg) or 2
        color_map = visualize.get_color_map_list(256)
        mask_dir, overlay_dir = (os.path.join(out_dir, d) for d in ("pseudo_color_prediction", "added_prediction"))
        os.makedirs(mask_dir, exist_ok=True)
        os.makedirs(overlay_dir, exist_ok=True)
        for path in paths:
            if cv2.imread(path) is None:
                raise ConfigError(f"Cannot read image {path}: not an image file or corrupt.")
            data = transforms({"img": path, "trans_info": []})
            batch = seg_collate([data])
            pred, _ = self.predict(model, batch["img"], batch["trans_info"][0], cfg)
            pred = pred.numpy()[0, 0].astype("uint8")
            name = os.path.splitext(os.path.basename(path))[0] + ".png"
            visualize.get_pseudo_color_map(pred, color_map).save(os.path.join(mask_dir, name))
            cv2.imwrite(os.path.join(overlay_dir, name), visualize.visualize(path, pred, color_map, weight=0.6))
            share = (pred > 0).mean() if num_classes == 2 else None
            log(f"{path}: {pred.shape[1]}x{pred.shape[0]}" + (f", foreground {share:.1%}" if share is not None else ""))
        return mask_dir, overlay_dir


class SegLogits(paddle.nn.Layer):
    """The deployed segmenter returns its main logits (N, C, H, W) as one tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out[0] if isinstance(out, (list, tuple)) else out
