"""Image classification and feature-matching retrieval, PaddleSeg-style yaml.

    task: cls                                   # optional: the model type tells it too
    model: {type: ConvNet, channels: [32, 64, 128], embedding_dim: 256, num_classes: 10}
    train_dataset: {type: ClsFileList, dataset_root: data/mnist, file_list: data/mnist/train_list.txt,
                    transforms: [{type: RandomCrop, size: 28, padding: 2}, {type: Normalize, ...}]}
    val_dataset: {type: ImageFolder, dataset_root: data/mnist/val, transforms: [{type: Normalize, ...}]}
    batch_size: 64
    iters: 1500                                 # or epochs: 20
    optimizer: {type: AdamW, weight_decay: 1.0e-4}
    lr_scheduler: {type: CosineAnnealingDecay, learning_rate: 0.002, warmup_iters: 50}
    loss: {types: [{type: CrossEntropyLoss}], coef: [0.5]}
    distill_loss: {types: [{type: KLLoss, temperature: 4}], coef: [0.5]}
    head_from_teacher: true                     # the student's classifier is the teacher's, frozen
    embedding_projection: true                  # a Linear to the teacher's embedding width, part of the student
    distill_token: hard                         # a DeiT student (model.type DeiT): its distillation head learns
                                                # the teacher (slim/distill/distill_token.py), its class head the labels

Evaluation prints top-1, top-5 and recall@1 of cosine feature matching (metrics.py) and keeps the
embeddings, labels and gallery mask of the last evaluation for `save_eval_outputs` (.npy files).
"""
import json
import os
from collections import OrderedDict

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from slim.distill.adaptor import MODEL_OUTPUT, LayerRef, unwrap
from slim.distill.config import register_config_keys
from slim.distill.errors import ConfigError, build_registered
from slim.tasks.base import TaskBase
from . import data as cls_data
from .metrics import classification_metrics, eval_line, gallery_mask
from .models import Classifier, adapt_to_state, build_classifier, vision_weights_url
from .vit import VIT_TYPES, output_logits

CONFIG_KEYS = ("head_from_teacher", "embedding_projection", "distill_token")
register_config_keys(*CONFIG_KEYS)

EVAL_BATCH = 256


class CrossEntropyLoss(nn.Layer):
    """Softmax cross-entropy on (N, C) logits and (N,) labels, mean over samples."""

    def __init__(self, label_smoothing=0.0, weight=None):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.weight = paddle.to_tensor(np.asarray(weight, dtype=np.float32)) if weight is not None else None

    def forward(self, logits, label):
        if self.label_smoothing:
            target = F.one_hot(label, logits.shape[-1]).astype(logits.dtype)
            target = target * (1 - self.label_smoothing) + self.label_smoothing / logits.shape[-1]
            return F.cross_entropy(logits, target, soft_label=True, weight=self.weight)
        return F.cross_entropy(logits, label, weight=self.weight)


LOSSES = {"CrossEntropyLoss": CrossEntropyLoss, "CELoss": CrossEntropyLoss}


class ClsLoss:
    """`loss: {types: [{type: CrossEntropyLoss}], coef: [1]}` on the logits (a DeiT model's training output: the
    average of its two heads, or its class head alone with `class_head_only`: `distill_token` trains the other)."""

    def __init__(self, loss_cfg, class_head_only=False):
        self.class_head_only = bool(class_head_only)
        loss_cfg = loss_cfg or {"types": [{"type": "CrossEntropyLoss"}], "coef": [1.0]}
        if "types" not in loss_cfg:
            raise ConfigError("`loss` must look like {types: [{type: CrossEntropyLoss}], coef: [1]}")
        types = list(loss_cfg["types"])
        coef = list(loss_cfg.get("coef", [1.0] * len(types)))
        if len(types) != len(coef):
            raise ConfigError(f"loss: {len(types)} types but {len(coef)} coef values; give one coef per type.")
        self.names, self.losses, self.coef = [], [], [float(c) for c in coef]
        for t in types:
            args = dict(t) if isinstance(t, dict) else {"type": t}
            name = args.pop("type", None)
            self.losses.append(build_registered(LOSSES, name, args, "classification loss"))
            self.names.append(name if name not in self.names else f"{name}_{len(self.names)}")

    def __call__(self, logits, batch):
        logits = output_logits(logits, self.class_head_only)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return OrderedDict((n, c * loss(logits, batch["label"]))
                           for n, loss, c in zip(self.names, self.losses, self.coef))


class ClsExport(nn.Layer):
    """The deployed model returns (logits (N, C), embedding (N, D)): classification and retrieval."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        embedding = self.model.embed(x)
        return self.model.head(embedding), embedding


def _raise_deferred(batch):
    if "error" in batch:
        raise ConfigError(batch["error"])


def _fixed_input_hw(model_cfg):
    """(H, W) of models that take one input size only (MLP, ViT, DeiT), else None."""
    if model_cfg.get("type") in VIT_TYPES:
        size = int(model_cfg.get("input_size", 28))
        return size, size
    if model_cfg.get("type") != "MLP":
        return None
    size = model_cfg.get("input_size", 28)
    w, h = (size, size) if isinstance(size, int) else size
    return int(h), int(w)


def logits_and_embedding(model, x):
    """(logits, embedding) of a Classifier or a DeiT model; any other model's output stands for both."""
    if hasattr(model, "logits_and_embedding"):
        return model.logits_and_embedding(x)
    if isinstance(model, Classifier):
        embedding = model.embed(x)
        return model.head(embedding), embedding
    out = model(x)
    if isinstance(out, (tuple, list)):  # an exported Classifier (ClsExport): (logits, embedding)
        return out[0], out[1]
    return out, out


class Task(TaskBase):
    name = "cls"
    primary_metric = "top1"
    config_keys = CONFIG_KEYS

    def __init__(self):
        self.last_eval = None  # arrays of the last evaluate() call, for save_eval_outputs

    # ----- models ---------------------------------------------------------------------------------
    def build_model(self, cfg):
        model_cfg = cfg.get("model") if "model" in cfg else cfg
        if not model_cfg:
            raise ConfigError("The config has no `model` section.")
        return build_classifier(model_cfg, cfg.get("embedding_projection"))

    @staticmethod
    def _size_projection(model, path, what):
        if isinstance(model, Classifier) and model.projection_requested:  # size the projection from the file
            from slim.engine.checkpoint import load_state
            adapt_to_state(model, load_state(path, what))

    def load_weights(self, model, path, what="weights", key=None):
        path = self.local_weights(path, key or what)
        self._size_projection(model, path, what)
        return super().load_weights(model, path, what, key)

    def pretrained_path(self, cfg):
        """`model.pretrained` when it names weights (a path or URL); `true` is paddle.vision's ImageNet weights."""
        value = (cfg.get("model") or {}).get("pretrained")
        return value if isinstance(value, str) else None

    def load_pretrained(self, model, cfg):
        model_cfg = cfg.get("model") or {}
        if model_cfg.get("pretrained") is True:  # paddle.vision's `pretrained=True`: the backbone's ImageNet weights
            self.load_matching_file(model.backbone.net, vision_weights_url(model_cfg), self.pretrained_key)
        elif self.pretrained_path(cfg):
            path = self.local_weights(self.pretrained_path(cfg), self.pretrained_key)
            self._size_projection(model, path, self.pretrained_key)
            self.load_matching_file(model, path, self.pretrained_key)

    def example_inputs(self, cfg, input_shape=None):
        model = cfg.get("model") or {}
        h, w = _fixed_input_hw(model) or (32, 32)
        return (paddle.randn(list(input_shape or [1, int(model.get("in_channels", 3)), h, w])),)

    def run_name(self, cfg):
        model = cfg.get("model") or {}
        if model.get("name"):
            return str(model["name"])
        parts = [str(model.get("type", "model")).lower()]
        if model.get("channels"):
            parts.append("-".join(str(c) for c in model["channels"]))
        if int(model.get("convs_per_stage") or 1) > 1:
            parts.append(f"x{int(model['convs_per_stage'])}")
        if model.get("depth"):
            parts.append(str(model["depth"]))
        if model.get("embedding_dim"):
            parts.append(f"e{model['embedding_dim']}")
        return "_".join(parts)

    def pair_needs_teacher(self, cfg):
        return bool(cfg.get("head_from_teacher") or cfg.get("embedding_projection"))

    def prepare_pair(self, student, teacher, cfg, log=print):
        """`head_from_teacher: true`: the student's classifier becomes a frozen copy of the teacher's.
        `embedding_projection: true`: the student's projection is sized to the teacher's embedding width."""
        s, t = unwrap(student), unwrap(teacher)
        head_from_teacher = bool(cfg.get("head_from_teacher"))
        projection = cfg.get("embedding_projection")
        if not (head_from_teacher or projection):
            return
        for role, model in (("student", s), ("teacher", t)):
            if not isinstance(model, Classifier):
                raise ConfigError(f"head_from_teacher / embedding_projection need models of this package's "
                                  f"registry (a `head` Linear on an `embedding`); the {role} is "
                                  f"{type(model).__name__}.")
        t_dim = t.head_in_dim
        if projection is True:
            if s.projection is not None and s.head_in_dim != t_dim:  # sized by --init_weights
                raise ConfigError(f"embedding_projection: the student's weights project to {s.head_in_dim}-d but "
                                  f"the teacher's embedding is {t_dim}-d; start from weights made with this teacher.")
            s.set_projection(t_dim)
            log(f"embedding_projection: the student's {s.embedding_dim}-d embedding is projected to the "
                f"teacher's width {t_dim} by a Linear that is part of the student (saved and exported with it)")
        if not head_from_teacher:
            return
        if t.num_classes != s.num_classes:
            raise ConfigError(f"head_from_teacher: the teacher classifies {t.num_classes} classes and the student "
                              f"{s.num_classes}; both configs need the same model.num_classes.")
        if s.head_in_dim != t_dim:
            raise ConfigError(
                f"head_from_teacher: the student's embedding is {s.head_in_dim}-d but the teacher's classifier "
                f"reads {t_dim}-d embeddings, so it cannot be shared. Widen the student "
                f"(model.embedding_dim: {t_dim}) or add `embedding_projection: true` (a Linear "
                f"{s.head_in_dim} -> {t_dim} that becomes part of the student).")
        s.head.set_state_dict(t.head.state_dict())
        for p in s.head.parameters():
            p.stop_gradient = True
        log(f"head_from_teacher: the student's classifier is the teacher's ({t_dim} -> {t.num_classes}), frozen; "
            f"only the student's feature extractor is trained")

    # ----- data -----------------------------------------------------------------------------------
    def build_dataset(self, cfg, mode):
        key = f"{mode}_dataset"
        ds_cfg = cfg.get(key)
        if not ds_cfg:
            raise ConfigError(f"The config has no `{key}` section (needed for {mode}).")
        dataset = cls_data.build_dataset(ds_cfg, key)
        if len(dataset) == 0:
            raise ConfigError(f"{key} holds no samples.")
        model = cfg.get("model") or {}
        num_classes = model.get("num_classes")
        if num_classes is not None:
            bad = dataset.labels[(dataset.labels < 0) | (dataset.labels >= int(num_classes))]
            if len(bad):
                raise ConfigError(f"{key} ({dataset.source}) has labels {sorted(set(bad.tolist()))[:5]} outside "
                                  f"[0, {int(num_classes) - 1}]: check model.num_classes and the labels.")
        dataset.defer_errors = mode == "train"  # read by the trainer's DataLoader thread
        channels = 1 if dataset.color == "gray" else 3
        if int(model.get("in_channels", 3)) != channels:
            raise ConfigError(f"{key} reads {dataset.color} images ({channels} channel(s)) but the model takes "
                              f"in_channels: {model.get('in_channels', 3)}; make them agree.")
        return dataset

    def collate_fn(self, mode):
        return cls_data.cls_collate

    def model_inputs(self, batch, mode="train"):
        _raise_deferred(batch)
        return (batch["img"],), {}

    def distill_label(self, batch):  # the trainer calls model_inputs first: it raises a deferred error
        return batch.get("label")

    def batch_size_of(self, batch):
        return int(batch["img"].shape[0])

    # ----- loss and evaluation --------------------------------------------------------------------
    def build_task_loss(self, cfg):
        return ClsLoss(cfg.get("loss"), class_head_only=bool(cfg.get("distill_token")))

    def logits_ref(self, cfg):
        """The model output; a DeiT model's training output is (class head, distillation head): its class head."""
        if (cfg.get("model") or {}).get("type") == "DeiT":
            return LayerRef(MODEL_OUTPUT, idx=0)
        return LayerRef(MODEL_OUTPUT)

    def forward_dataset(self, model, dataset, batch_size=EVAL_BATCH):
        """(logits, embeddings, labels) as numpy arrays over the whole dataset, in order."""
        model = unwrap(model)
        logits, embeddings, labels = [], [], []
        with paddle.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = cls_data.cls_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
                _raise_deferred(batch)
                out, emb = logits_and_embedding(model, batch["img"])
                logits.append(out.numpy())
                embeddings.append(emb.numpy())
                labels.append(batch["label"].numpy())
        return np.concatenate(logits), np.concatenate(embeddings), np.concatenate(labels)

    def evaluate(self, model, dataset, cfg, log=print):
        logits, embeddings, labels = self.forward_dataset(model, dataset)
        metrics = classification_metrics(logits, embeddings, labels)
        self.last_eval = {"embeddings": embeddings.astype(np.float32, copy=False),
                          "labels": labels.astype(np.int64, copy=False),
                          "logits": logits.astype(np.float32, copy=False), "is_gallery": gallery_mask(labels),
                          "files": [p for p, _ in getattr(dataset, "samples", [])]}
        log(eval_line(metrics))
        return metrics

    def save_eval_outputs(self, out_dir, log=print):
        """Write the last evaluation's val_embeddings.npy, val_labels.npy, val_logits.npy,
        val_is_gallery.npy and val_files.txt (row i of each is val image i) into out_dir."""
        if not self.last_eval:
            return []
        os.makedirs(out_dir, exist_ok=True)
        paths = []
        for key in ("embeddings", "labels", "logits", "is_gallery"):
            path = os.path.join(out_dir, f"val_{key}.npy")
            np.save(path, self.last_eval[key])
            paths.append(path)
        if self.last_eval["files"]:
            path = os.path.join(out_dir, "val_files.txt")
            with open(path, "w") as f:
                f.write("\n".join(self.last_eval["files"]) + "\n")
            paths.append(path)
        log(f"saved the validation embeddings {self.last_eval['embeddings'].shape} to "
            f"{os.path.join(out_dir, 'val_embeddings.npy')} (labels, logits, gallery mask beside it)")
        return paths

    # ----- inference tools ------------------------------------------------------------------------
    def export_input_spec(self, cfg, input_shape=None):
        model = cfg.get("model") or {}
        channels = int(model.get("in_channels", 3))
        h, w = _fixed_input_hw(model) or (None, None)
        shape = list(input_shape or [None, channels, h, w])
        return [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]

    def export_model(self, model, cfg):
        return ClsExport(unwrap(model)) if isinstance(unwrap(model), Classifier) else model

    def predict_files(self, model, cfg, paths, out_dir, log=print):
        """Top-5 classes per image in out_dir/predictions.json, embeddings in out_dir/embeddings.npy."""
        ds_cfg = cfg.get("val_dataset") or {}
        transforms = cls_data.Compose(ds_cfg.get("transforms", ds_cfg.get("transform_ops")))
        color = ds_cfg.get("color", "rgb")
        model = unwrap(model)
        rows, embeddings = [], []
        for path in paths:
            x = paddle.to_tensor(transforms(cls_data.read_image(path, color))[None])
            logits, emb = logits_and_embedding(model, x)
            prob = F.softmax(logits, axis=-1).numpy()[0]
            top = np.argsort(-prob, kind="stable")[:5]
            rows.append({"image": path, "top5": [{"class": int(c), "score": float(prob[c])} for c in top]})
            embeddings.append(emb.numpy()[0])
            log(f"{path}: class {int(top[0])} ({prob[top[0]]:.3f})")
        os.makedirs(out_dir, exist_ok=True)
        pred_path = os.path.join(out_dir, "predictions.json")
        with open(pred_path, "w") as f:
            json.dump(rows, f, indent=1)
        emb_path = os.path.join(out_dir, "embeddings.npy")
        np.save(emb_path, np.stack(embeddings).astype(np.float32))
        return pred_path, emb_path
