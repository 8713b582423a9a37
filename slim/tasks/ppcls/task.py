"""The PaddleClas task: PaddleClas-format configs (Arch, Global, Loss, Optimizer, DataLoader, AMP) on the engine.

The trainer's model is the whole `Arch` model: a ppcls backbone, or a DistillationModel holding every
sub-model (frozen ones under no_grad, with stop_gradient parameters, in eval mode unless Arch.frozen_mode: train).
The optimizer and the learning rate at every iteration are PaddleClas's (optimizer.py, schedule.py). The loss is every
`Loss.Train` entry on its output (slim/tasks/ppcls/losses.py), so checkpoints, resume, AMP, SIGTERM handling and
best_model apply to all sub-models at once; evaluation reports the `infer_model_name` model first (its top-1
chooses best_model) and, in mutual learning, every trained model.
"""
import os
from collections import OrderedDict
from fractions import Fraction

import numpy as np
import paddle

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError
from slim.engine import env
from slim.tasks.base import TaskBase
from slim.tasks.cls.data import cls_collate
from slim.tasks.cls.metrics import topk_accuracy
from . import arch as ppcls_arch
from . import config as pc
from . import data as pc_data
from . import deit  # noqa: F401  (registers DistillationTokenLoss, DeiT's distillation token)
from .batch_ops import MixingCollate, build_batch_ops
from .losses import CELoss, CombinedLoss, build_loss_entry
from .optimizer import optimizer_settings

LOSS_LAYERS = "loss_layers"  # sublayer of the model holding losses with trainable parameters (MGD)
# Loss.Train entries that read each sample's class (not with mixed targets, unless use_target_as_gt)
CLASS_ID_LOSSES = ("DistillationDKDLoss", "DistillationWSLLoss", "DistillationSKDLoss")
BATCH_OPS = "DataLoader.Train.dataset.batch_transform_ops"


def resolve_pdparams(path, key):
    """PaddleClas names weights without `.pdparams` (output/x/best_model); this package's checkpoints are folders
    holding model.pdparams. A missing file is one error naming the key."""
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.pdparams")
    if os.path.isfile(path):
        return path
    if os.path.isfile(path + ".pdparams"):
        return path + ".pdparams"
    raise ConfigError(f"{key} = {path}: no such weights (tried {path} and {path}.pdparams, or a folder holding "
                      f"model.pdparams). Give the trained weights' path.")


class SubModelSpec:
    def __init__(self, name, cfg, frozen, where, pretrained=None):
        self.name, self.frozen, self.where = name, bool(frozen), where
        cfg = dict(cfg or {})
        self.backbone = cfg.pop("name", None)
        if not self.backbone:
            raise ConfigError(f"{where} has no `name` (a ppcls.arch.backbone model, e.g. ResNet18)")
        self.pretrained = cfg.pop("pretrained", False) if pretrained is None else pretrained
        self.use_ssld = bool(cfg.pop("use_ssld", False))
        self.patterns = [str(p) for p in (cfg.pop("return_patterns", None) or [])]
        if cfg.pop("return_stages", None):
            raise ConfigError(f"{where}.return_stages is not supported; name the layers in return_patterns")
        self.kwargs = cfg


class Task(TaskBase):
    name = "ppcls"
    primary_metric = "top1"
    config_keys = pc.TOP_KEYS
    pretrained_key = "Global.pretrained_model"

    def __init__(self):
        self.mode = "train"  # "eval": tools that load Global.pretrained_model skip the sub-models' own weights
        self.train_losses = None
        self.eval_losses = None
        self._datasets = {}
        self.last_eval = None
        self.iters = None  # --iters: a run of that many iterations instead of Global.epochs

    # ----- weights of the paddleclas package (its downloader and cache) ------------------------------------
    def cached_weights(self, url):
        ppcls_arch.import_ppcls()
        from ppcls.utils.download import WEIGHTS_HOME
        path = os.path.join(WEIGHTS_HOME, url.split("/")[-1])
        return path if os.path.isfile(path) else None

    def download_weights(self, url):
        ppcls_arch.import_ppcls()
        from ppcls.utils.download import get_weights_path_from_url
        return get_weights_path_from_url(url)

    # ----- the Arch section ------------------------------------------------------------------------------
    def specs(self, cfg):
        arch = pc.arch_copy(cfg)
        name = arch.get("name")
        glob = pc.global_cfg(cfg)
        class_num = arch.get("class_num", glob.get("class_num"))
        if name in ppcls_arch.DISTILLATION_MODELS:
            models = arch.get("models")
            if not isinstance(models, list) or not models:
                raise ConfigError("Arch.models must list the sub-models, e.g. [{Teacher: {name: ResNet34}}, "
                                  "{Student: {name: ResNet18}}]")
            freeze = arch.get("freeze_params_list") or [False] * len(models)
            plist = arch.get("pretrained_list")
            for what, values in (("freeze_params_list", freeze), ("pretrained_list", plist)):
                if values is not None and len(values) != len(models):
                    raise ConfigError(f"Arch.{what} has {len(values)} entries for {len(models)} models; give one each")
            specs = []
            for i, item in enumerate(models):
                if not isinstance(item, dict) or len(item) != 1:
                    raise ConfigError(f"Arch.models.{i} must be one `Name: {{name: Backbone, ...}}` entry, "
                                      f"got {item!r}")
                (sub_name, sub_cfg), = item.items()
                sub_cfg = dict(sub_cfg or {})
                if class_num is not None and "class_num" not in sub_cfg:
                    sub_cfg["class_num"] = class_num
                pre = plist[i] if plist is not None and plist[i] is not None else None
                specs.append(SubModelSpec(str(sub_name), sub_cfg, freeze[i], f"Arch.models.{i}.{sub_name}", pre))
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ConfigError(f"Arch.models names must differ, got {names}")
            return specs
        if name is None:
            raise ConfigError("Arch has no `name` (a ppcls.arch.backbone model, or DistillationModel)")
        arch.pop("use_sync_bn", None)
        if class_num is not None:
            arch["class_num"] = class_num
        return [SubModelSpec(None, arch, False, "Arch")]

    def infer_model_name(self, cfg, specs=None):
        specs = specs or self.specs(cfg)
        arch = cfg.get("Arch") or {}
        names = [s.name for s in specs]
        chosen = arch.get("infer_model_name")
        if chosen is None:
            chosen = "Student" if "Student" in names else names[-1]
        if chosen not in names:
            raise ConfigError(f"Arch.infer_model_name {chosen!r} is not one of Arch.models ({', '.join(names)})")
        return chosen

    def _build_one(self, spec):
        fn = ppcls_arch.backbone_factory(spec.backbone)
        try:
            return fn(pretrained=False, **spec.kwargs)
        except TypeError as e:
            raise ConfigError(f"{spec.where}: {spec.backbone} could not be built from {sorted(spec.kwargs)}: {e}") \
                from None

    def _load_sub_weights(self, model, spec, log):
        key = f"{spec.where}.pretrained"
        value = spec.pretrained
        if value in (False, None, "", "False", "false"):
            if spec.frozen:
                raise ConfigError(f"{spec.where} is frozen (freeze_params_list) but has no weights: set {key} to "
                                  f"its trained weights (e.g. -o {key}=output/teacher/best_model), or set its "
                                  f"freeze_params_list entry to False to train it (mutual learning).")
            return
        if value is True or value in ("True", "true"):
            path = self.local_weights(ppcls_arch.model_url(spec.backbone, spec.use_ssld), key)
        else:
            path = resolve_pdparams(self.local_weights(str(value), key), key)  # a URL is fetched into the cache
        state = self._part_for(model, self._read_state(path, key), spec.name)
        if spec.frozen:  # every parameter, the classifier included, or the run stops
            from slim.engine.checkpoint import apply_state
            apply_state(model, state, f"{key} {path}", True,
                        note=" A frozen model must load every parameter: one left at its random start would teach "
                             "noise (a classifier of another class_num needs weights trained for this class_num).")
            log(f"{key} {path}: loaded {len(model.state_dict())}/{len(model.state_dict())} tensors into "
                f"{spec.name} ({spec.backbone}, frozen)")
        else:
            from slim.engine.weights import load_matching
            load_matching(model, state, f"{key} {path}", log=log)

    @staticmethod
    def _read_state(path, key):
        from slim.engine.checkpoint import read_model_state
        return read_model_state(path, key)

    @staticmethod
    def _part_for(model, state, sub_name):
        """A DistillationModel file (keys `Teacher.*`, `Student.*`) given for one sub-model: its part."""
        own = model.state_dict()
        prefix = f"{sub_name}."
        if sub_name and not any(k in state for k in own) and any(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        return state

    def build_model(self, cfg):
        log = self.log
        specs = self.specs(cfg)
        arch = cfg.get("Arch") or {}
        class_num = arch.get("class_num", pc.global_cfg(cfg).get("class_num"))
        skip_sub_weights = self.mode == "eval" and bool(pc.global_cfg(cfg).get("pretrained_model"))
        if "class_num" not in arch and pc.global_cfg(cfg).get("class_num") is not None:
            log(f"Global.class_num {class_num} (deprecated in PaddleClas: Arch.class_num) is used")
        if arch.get("name") not in ppcls_arch.DISTILLATION_MODELS:
            spec = specs[0]
            if spec.patterns:
                log("Arch.return_patterns of a single model is not used (no loss reads them)")
            self.train_losses = self._losses(cfg, model=None, names=None)
            model = self._build_one(spec)
            if not skip_sub_weights:
                self._load_sub_weights(model, spec, log)
            self.built_model = model
            return model
        own = {}
        for i, item in enumerate(arch.get("models") or []):
            (sub_name, sub_cfg), = item.items()
            own[str(sub_name)] = "class_num" in (sub_cfg or {})
        given = [s.name for s in specs if not own.get(s.name)]
        if class_num is not None and given:
            log(f"class_num {class_num} of Arch reaches {', '.join(given)} (no class_num of their own)")
        names = [s.name for s in specs]
        losses = self._losses(cfg, names=names)  # checked before any weights are read or fetched
        models = []
        for spec in specs:
            model = self._build_one(spec)
            if not skip_sub_weights:
                self._load_sub_weights(model, spec, log)
            models.append(model)
        patterns = {s.name: list(s.patterns) for s in specs}
        for loss in losses:
            for m, keys in loss.keys_needed().items():
                if m not in patterns:
                    raise ConfigError(f"{type(loss).__name__} names the model {m!r}, but Arch.models has "
                                      f"{', '.join(names)}.")
                patterns[m].extend(keys)
        model = ppcls_arch.DistillationModel(names, models, [s.frozen for s in specs],
                                             self.infer_model_name(cfg, specs), patterns,
                                             frozen_mode=str(arch.get("frozen_mode") or "eval"))
        trainable = [loss for loss in losses if any(not p.stop_gradient for p in loss.parameters())]
        if trainable:
            for i, loss in enumerate(trainable):
                if not hasattr(loss, "prepare"):
                    raise ConfigError(f"{type(loss).__name__} has parameters but cannot run inside the model")
                loss.prepared_key = f"{LOSS_LAYERS}.{i}"
            model.add_sublayer(LOSS_LAYERS, paddle.nn.LayerList(trainable))
        frozen = [s.name for s in specs if s.frozen]
        trained = [s.name for s in specs if not s.frozen]
        mode = ("eval mode" if model.frozen_mode == "eval" else
                "train mode as in PaddleClas: BatchNorm on batch statistics, running statistics updated")
        log(f"DistillationModel: {', '.join(f'{s.name} ({s.backbone})' for s in specs)}; frozen ({mode}, no "
            f"gradient): {', '.join(frozen) or 'none'}; trained: {', '.join(trained)}"
            + (" (mutual learning: one optimizer over all of them)" if len(trained) > 1 else "")
            + f"; infer_model_name: {model.infer_model_name}")
        self.train_losses = losses
        self.built_model = model
        return model

    def _losses(self, cfg, model=None, names=None):
        entries = ((cfg.get("Loss") or {}).get("Train"))
        if not entries:
            raise ConfigError("The config has no Loss.Train list (e.g. - CELoss: {weight: 1.0})")
        losses = [build_loss_entry(e, f"Loss.Train.{i}") for i, e in enumerate(entries)]
        for loss in losses:
            if names is None and type(loss).__name__ != "CELoss":
                raise ConfigError(f"Loss.Train {type(loss).__name__} compares the models of a DistillationModel; a "
                                  f"single-model Arch trains with CELoss.")
            if names is not None:
                for m in loss.used_models():
                    if m not in names:
                        raise ConfigError(f"Loss.Train {type(loss).__name__} names the model {m!r}, but Arch.models "
                                          f"has {', '.join(names)}.")
        if pc_data.train_batch_ops(cfg):  # mixed targets: no class ids for the losses that read them
            for loss in losses:
                if type(loss).__name__ in CLASS_ID_LOSSES and not getattr(loss, "use_target_as_gt", False):
                    raise ConfigError(f"Loss.Train {type(loss).__name__} reads each sample's class, but {BATCH_OPS} "
                                      f"mix the labels of a batch (Mixup, Cutmix): set its use_target_as_gt: True (the "
                                      f"teacher's class), or remove them (-o {BATCH_OPS}=null).")
        if names is not None:
            infer = self.infer_model_name(cfg)
            for loss in losses:
                if isinstance(loss, CELoss):
                    loss.infer_model_name = infer
        return losses

    def quant_target(self, model):
        """What QAT wraps (`Slim: {quant: {name: pact}}`, slim/quant): the infer_model_name model of a
        DistillationModel (the frozen teachers stay fp32), or the single model."""
        return ppcls_arch.infer_layer(model)

    def inner_teacher(self, model):
        """--teacher_cache: the DistillationModel's frozen models are the teacher whose tensors are stored."""
        if not isinstance(model, ppcls_arch.DistillationModel):
            raise ConfigError(f"--teacher_cache stores the outputs of a DistillationModel's frozen teacher; this Arch "
                              f"is a single model ({type(model).__name__}). Drop --teacher_cache.")
        if model.frozen_names() and model.frozen_mode == "train":
            raise ConfigError("--teacher_cache stores a frozen teacher's outputs, but Arch.frozen_mode train runs it "
                              "in train mode (BatchNorm on each batch's statistics): its outputs change with the "
                              "batch. Drop --teacher_cache or set -o Arch.frozen_mode=eval.")
        if not model.frozen_names():
            raise ConfigError("--teacher_cache stores a frozen teacher's outputs, but Arch.freeze_params_list freezes "
                              "no model (mutual learning: every model trains, so no output stays the same). Drop "
                              "--teacher_cache.")
        return model

    def build_task_loss(self, cfg):
        if self.train_losses is None:
            self.build_model(cfg)
        return CombinedLoss(self.train_losses)

    def pretrained_path(self, cfg):
        value = pc.global_cfg(cfg).get("pretrained_model")
        return value if value else None

    def load_pretrained(self, model, cfg):
        """Global.pretrained_model at the start of training: every tensor that fits, by name and shape."""
        path = self.pretrained_path(cfg)
        if path:
            from slim.engine.weights import load_matching
            local = resolve_pdparams(self.local_weights(path, self.pretrained_key), self.pretrained_key)
            load_matching(model, self._read_state(local, self.pretrained_key), f"{self.pretrained_key} {local}",
                          log=self.log)

    def load_weights(self, model, path, what="weights", key=None):
        """Every tensor of the model (losses' trainable layers excepted), or an error naming the missing keys.
        A DistillationModel file evaluated with a plain config loads its infer model's part."""
        from slim.engine.checkpoint import apply_state
        key = key or what
        local = resolve_pdparams(self.local_weights(path, key), key)
        state = self._read_state(local, key)
        if not isinstance(model, ppcls_arch.DistillationModel) and not any(k in state for k in model.state_dict()):
            for prefix in ("Student.",) + tuple(sorted({k.split(".")[0] + "." for k in state})):
                part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                if part and all(k in part for k in model.state_dict()):
                    self.log(f"{key} {local}: the model's part {prefix[:-1]} of a DistillationModel file")
                    state = part
                    break
        own = model.state_dict()
        optional = [k for k in own if k.startswith(LOSS_LAYERS + ".") and k not in state]
        if optional:
            state = dict(state)
            state.update((k, own[k]) for k in optional)
        state = {k: v for k, v in state.items() if k in own or not k.startswith(LOSS_LAYERS + ".")}
        apply_state(model, state, f"{what} {local}", True)
        self.log(f"{what} {local}: loaded {len(own) - len(optional)}/{len(own)} tensors into {type(model).__name__}")
        return local

    def example_inputs(self, cfg, input_shape=None):
        shape = input_shape or [1] + list(pc.global_cfg(cfg).get("image_shape") or [3, 224, 224])
        return (paddle.randn(list(shape)),)

    def run_name(self, cfg):
        return str((cfg.get("Arch") or {}).get("name", "ppcls"))

    # ----- settings ---------------------------------------------------------------------------------------
    @staticmethod
    def _sampling(cfg):
        """shuffle and drop_last of DataLoader.Train.sampler, with the defaults of Paddle's
        DistributedBatchSampler (False, False) that PaddleClas builds."""
        s = pc.sampler(cfg, "Train")
        return {"shuffle": bool(s.get("shuffle", False)), "drop_last": bool(s.get("drop_last", False))}

    def iters_per_epoch(self, cfg):
        from slim.engine.data import ResumableBatchSampler
        n = len(self.build_dataset(cfg, "train"))
        sampling = self._sampling(cfg)
        return len(ResumableBatchSampler(n, pc.batch_size(cfg, "Train"), sampling["shuffle"], sampling["drop_last"],
                                         0, max(env.world_size(), 1)))

    def training_settings(self, cfg):
        """The trainer's settings; the learning rate at every iteration is PaddleClas's (schedule.py): its
        step_each_epoch is the train loader's batches per epoch, its epochs Global.epochs (--iters N: N / that)."""
        g = pc.global_cfg(cfg)
        for key, fine in (("update_freq", 1), ("iter_per_epoch", None)):
            if g.get(key, fine) != fine:
                raise ConfigError(f"Global.{key} {g[key]} is not supported here (it changes the steps and the "
                                  f"schedule); remove it (-o Global.{key}={'null' if fine is None else fine}).")
        ipe = self.iters_per_epoch(cfg)
        epochs = Fraction(int(self.iters), ipe) if self.iters else int(g.get("epochs") or 1)
        model = getattr(self, "built_model", None)
        shapes = None if model is None else [(n, list(p.shape)) for n, p in model.named_parameters()
                                             if not p.stop_gradient]
        log = self.log if not getattr(self, "settings_logged", False) else (lambda _: None)  # said once a run
        self.settings_logged = True
        optimizer, schedule = optimizer_settings(cfg.get("Optimizer"), ipe, epochs, log=log, named_shapes=shapes)
        settings = {"batch_size": pc.batch_size(cfg, "Train"), "optimizer": optimizer, "lr_scheduler": schedule,
                    **self._sampling(cfg)}
        if self.iters:
            settings["iters"] = int(self.iters)
        else:
            settings["epochs"] = epochs
        return settings

    # ----- data -------------------------------------------------------------------------------------------
    def data_config(self, cfg):
        return ((cfg.get("DataLoader") or {}).get("Train") or {}).get("dataset")

    def build_dataset(self, cfg, mode):
        section = "Train" if mode == "train" else "Eval"
        key = (section, id(cfg))
        if key not in self._datasets:
            where = f"DataLoader.{section}"
            dataset = pc_data.build_dataset((cfg.get("DataLoader") or {}).get(section), where)
            if len(dataset) == 0:
                raise ConfigError(f"{where} holds no samples")
            classes = self.class_count(cfg)
            if classes is not None:
                bad = dataset.labels[(dataset.labels < 0) | (dataset.labels >= classes)]
                if len(bad):
                    raise ConfigError(f"{where} ({dataset.source}) has labels {sorted(set(bad.tolist()))[:5]} outside "
                                      f"[0, {classes - 1}]: set Arch.class_num (-o Arch.class_num=N) to the number of "
                                      f"classes.")
            dataset.defer_errors = mode == "train"
            if mode == "train":
                self._batch_ops = self._build_batch_ops(dataset, cfg)
            self._datasets[key] = dataset
        return self._datasets[key]

    def _build_batch_ops(self, dataset, cfg):
        """DataLoader.Train.dataset.batch_transform_ops (batch_ops.py), None without."""
        entries = getattr(dataset, "batch_transform_ops", None)
        if not entries:
            return None
        return build_batch_ops(entries, self.class_count(cfg), BATCH_OPS, log=self.log)

    def class_count(self, cfg):
        arch = cfg.get("Arch") or {}
        value = arch.get("class_num", pc.global_cfg(cfg).get("class_num"))
        if value is None:
            for item in arch.get("models") or []:
                for sub in item.values():
                    if isinstance(sub, dict) and sub.get("class_num") is not None:
                        value = sub["class_num"] if value is None else min(value, sub["class_num"])
        return int(value) if value is not None else None

    def collate_fn(self, mode):
        ops = getattr(self, "_batch_ops", None)
        return MixingCollate(ops) if mode == "train" and ops else cls_collate

    def model_inputs(self, batch, mode="train"):
        if "error" in batch:
            raise ConfigError(batch["error"])
        return (batch["img"],), {}

    def distill_label(self, batch):
        label = batch.get("label")
        return None if label is not None and label.ndim == 2 and label.shape[-1] > 1 else label  # mixed: no ids

    def batch_size_of(self, batch):
        return int(batch["img"].shape[0])

    # ----- evaluation -------------------------------------------------------------------------------------
    def _eval_losses(self, cfg, model):
        entries = (cfg.get("Loss") or {}).get("Eval") or []
        losses = []
        for i, e in enumerate(entries):
            name = next(iter(e)) if isinstance(e, dict) and e else e
            if isinstance(model, ppcls_arch.DistillationModel) or name == "CELoss":
                loss = build_loss_entry(e, f"Loss.Eval.{i}")
                if isinstance(loss, CELoss) and isinstance(model, ppcls_arch.DistillationModel):
                    loss.infer_model_name = model.infer_model_name
                if not list(loss.parameters()):
                    losses.append(loss)
        return CombinedLoss(losses) if losses else None

    def evaluate(self, model, dataset, cfg, log=print):
        model = unwrap(model)
        bs = int(pc.sampler(cfg, "Eval").get("batch_size") or 64)
        names = model.model_names if isinstance(model, ppcls_arch.DistillationModel) else [None]
        logits = {n: [] for n in names}
        labels, loss_sums, batches = [], OrderedDict(), 0
        eval_loss = self._eval_losses(cfg, model)
        was_training = model.training
        model.eval()
        try:
            with paddle.no_grad():
                for start in range(0, len(dataset), bs):
                    batch = cls_collate([dataset[i] for i in range(start, min(start + bs, len(dataset)))])
                    if "error" in batch:
                        raise ConfigError(batch["error"])
                    out = model(batch["img"])
                    for n in names:
                        logits[n].append(ppcls_arch.logits_of(out[n] if n is not None else out).numpy())
                    labels.append(batch["label"].numpy())
                    if eval_loss is not None:
                        for k, v in eval_loss(out, batch).items():
                            loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
                    batches += 1
        finally:
            if was_training:
                model.train()
        labels = np.concatenate(labels)
        metrics = OrderedDict()
        infer = model.infer_model_name if names != [None] else None
        per_model = {}
        for n in names:
            z = np.concatenate(logits[n])
            per_model[n] = (topk_accuracy(z, labels, 1), topk_accuracy(z, labels, 5))
        metrics["top1"], metrics["top5"] = per_model[infer]
        trained = [n for n in names if n is not None and not model.frozen[n]]
        for n in names:
            if n is not None and n != infer and (len(trained) > 1 or n in trained):
                metrics[f"{n}_top1"], metrics[f"{n}_top5"] = per_model[n]
        for k, v in loss_sums.items():
            metrics[k] = v / max(batches, 1)
        metrics["images"] = int(len(labels))
        who = f" ({infer})" if infer else ""
        line = f"[EVAL] #Images: {len(labels)} top1{who}: {metrics['top1']:.4f} top5: {metrics['top5']:.4f}"
        for n in names:
            if n is not None and f"{n}_top1" in metrics:
                line += f" | {n} top1: {metrics[n + '_top1']:.4f} top5: {metrics[n + '_top5']:.4f}"
        losses = [(k, metrics[k]) for k in loss_sums]
        if losses:
            line += " | " + " ".join(f"{k}: {v:.4f}" for k, v in losses)
        log(line)
        self.last_eval = {"model": model}
        return metrics

    def save_eval_outputs(self, out_dir, log=print):
        """Beside best_model/model.pdparams (every sub-model), the infer model alone as <name>.pdparams, loadable
        by a plain config of that model (PaddleClas's Student weights)."""
        model = (self.last_eval or {}).get("model")
        if not isinstance(model, ppcls_arch.DistillationModel) or not env.is_main_process():
            return []
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, f"{model.infer_model_name}.pdparams")
        paddle.save(model.sub(model.infer_model_name).state_dict(), path)
        log(f"saved {model.infer_model_name} alone to {path}")
        return [path]

    # ----- export -----------------------------------------------------------------------------------------
    def export_input_spec(self, cfg, input_shape=None):
        image = list(pc.global_cfg(cfg).get("image_shape") or [3, None, None])
        shape = list(input_shape) if input_shape else [None] + image
        return [paddle.static.InputSpec(shape=shape, dtype="float32", name="x")]

    def export_model(self, model, cfg):
        model = unwrap(model)
        if isinstance(model, ppcls_arch.DistillationModel):
            model.remove_captures()
        return ppcls_arch.infer_layer(model)
