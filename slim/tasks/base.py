"""The interface between the shared trainer and a task (segmentation, detection, classification).

The trainer knows nothing about images, boxes or classes: it asks the task for a model, datasets, how to
feed a batch to the model, the task's own loss terms and an evaluation. A new task subclasses `TaskBase`
and registers its module in `slim/tasks/__init__.py`.
"""
import contextlib
import os
from collections import OrderedDict

from slim.distill.adaptor import LayerRef
from slim.distill.errors import ConfigError


class TaskBase:
    #: short name used in logs, run folder names and `task:` in configs
    name = "base"
    #: the metric that picks `best_model/` (higher is better)
    primary_metric = "metric"
    #: top-level config keys this task understands beyond the trainer's own
    config_keys = ()

    # ----- training settings ----------------------------------------------------------------------
    def training_settings(self, cfg):
        """The trainer's keys, in this package's (PaddleSeg-style) spelling: batch_size, iters or epochs,
        optimizer, lr_scheduler (or learning_rate), and optionally reference_batch_size (the total batch
        the learning rate was set for; the trainer scales linearly when the run's total batch differs), and
        shuffle / drop_last of the training batches (default True / True; drop_last False fills the last batch
        of an epoch up from the start of the epoch's order).
        A task whose configs spell these otherwise (ppdet's TrainReader, LearningRate, ...) translates here."""
        return cfg

    # ----- models ---------------------------------------------------------------------------------
    def build_model(self, cfg):
        """A `paddle.nn.Layer` from the full config dict (its `model` section, usually)."""
        raise NotImplementedError

    def num_classes(self, cfg):
        return (cfg.get("model") or {}).get("num_classes")

    def check_teacher_compatible(self, cfg, teacher_cfg):
        """Teacher and student must predict the same classes (their logits are compared)."""
        s, t = self.num_classes(cfg), self.num_classes(teacher_cfg)
        if s is not None and t is not None and int(s) != int(t):
            raise ConfigError(f"The teacher predicts {t} classes and the student {s}: distillation compares "
                              f"their class scores, so both configs need the same num_classes.")

    def prepare_teacher_config(self, cfg, teacher_cfg):
        """The teacher's config as the teacher is built from it (e.g. settings it leaves to its dataset,
        taken from the student's); called before `check_teacher_compatible`."""
        return teacher_cfg

    def default_pairs(self, cfg, teacher_cfg):
        """Distillation pairs (yaml `distill:` dicts) used when the configs name none; [] for none.
        Returns (pairs, a sentence for the log saying what was chosen)."""
        return [], ""

    def slim_config(self, cfg, path):
        """A library's own distillation config (`--slim_config`) -> an object with teacher_cfg, weights,
        pairs (yaml `distill:` dicts), student_cfg and notes (log lines)."""
        raise ConfigError(f"--slim_config is PaddleDetection's distillation config; the {self.name} task has "
                          f"none. Give the teacher with -t/--teacher_config and the pairs in the student config.")

    def prepare_pair(self, student, teacher, cfg, log=print):
        """Called once both models are built and the teacher's weights loaded, before training (e.g. to
        copy and freeze the teacher's classifier in the student)."""

    #: the config key of full-model weights (named in errors and logs)
    pretrained_key = "model.pretrained"
    #: where weight-loading lines go; launch points it at the run's notes while it builds models
    log = staticmethod(print)

    def pretrained_path(self, cfg):
        """The weights named by the config (`model.pretrained`), or None."""
        return (cfg.get("model") or {}).get("pretrained")

    def init_weights_path(self, cfg):
        """The weights a training run starts the model from (default: `pretrained_path`). A task whose
        configs name trained weights that training must not load (ppdet's `weights:`) returns None."""
        return self.pretrained_path(cfg)

    # ----- weights named by URL ---------------------------------------------------------------------
    def cached_weights(self, url):
        """Where the library that downloads `url` keeps it, when it is already there (default: Paddle's
        weights cache, ~/.cache/paddle/hapi/weights)."""
        from paddle.utils.download import WEIGHTS_HOME
        path = os.path.join(WEIGHTS_HOME, url.split("/")[-1])
        return path if os.path.isfile(path) else None

    def download_weights(self, url):
        """Download `url` into the library's cache with the library's own utility; returns the file."""
        from paddle.utils.download import get_weights_path_from_url
        return get_weights_path_from_url(url)

    def local_weights(self, path, key):
        """A local path for `path`: URLs are fetched once into the library's cache (slim/engine/weights.py)."""
        from slim.engine import weights
        if weights.is_url(path):
            return weights.fetch(path, key, self.cached_weights, self.download_weights, log=self.log)
        return path

    def load_weights(self, model, path, what="weights", key=None):
        """Full-model weights, strictly: every parameter must be in the file (teacher, eval, --init_weights)."""
        from slim.engine.checkpoint import load_model_weights
        path = self.local_weights(path, key or what)
        return load_model_weights(model, path, what, log=self.log)

    def load_pretrained(self, model, cfg):
        """Weights the config names for training to start from, loaded as the library loads them: by name
        and shape, with N/M logged (default: `init_weights_path`, e.g. PaddleSeg's `model.pretrained`)."""
        path = self.init_weights_path(cfg)
        if path:
            self.load_matching_file(model, path, self.pretrained_key)

    def load_matching_file(self, model, path, key, match=None):
        from slim.engine.checkpoint import read_model_state
        from slim.engine.weights import load_matching
        local = self.local_weights(path, key)
        state = read_model_state(local, key)
        return load_matching(model, state, f"{key} {local}", log=self.log, match=match)

    @contextlib.contextmanager
    def logging_to(self, log):
        """Route weight-loading lines to `log` inside the block."""
        previous = self.__dict__.get("log")
        self.log = log
        try:
            yield self
        finally:
            if previous is None:
                del self.log
            else:
                self.log = previous

    def logits_ref(self, cfg):
        """Where `distill_loss` (losses on the model's logits) reads the logits in the model output."""
        return LayerRef("$output")

    def example_inputs(self, cfg, input_shape=None):
        """Inputs for one forward, used for connector building, layer listing and FLOPs."""
        raise NotImplementedError

    def inner_teacher(self, model):
        """For models that run a frozen teacher inside their own forward (one config holding both models): an
        object the teacher-output cache reads from, or None. It has teacher_tensor_names() (the frozen tensors
        the losses read), teacher_features(*inputs) (OrderedDict name -> tensor, run under no_grad),
        teacher_parts() (the cache fingerprint of the frozen weights and layers), and the model's forward takes
        `teacher_features=` (that dict) in place of running the frozen part."""
        return None

    def pair_needs_teacher(self, cfg):
        """Whether `prepare_pair` changes the student from the teacher (then the teacher is built before
        training even when a teacher-output cache would spare running it)."""
        return False

    #: config keys that do not shape a model's outputs (left out of a teacher's fingerprint)
    non_model_keys = ("iters", "epochs", "batch_size", "optimizer", "lr_scheduler", "learning_rate", "loss",
                      "train_dataset", "val_dataset", "test_dataset", "distill", "distill_loss", "ema",
                      "reference_batch_size", "export", "_base_", "task", "teachers")

    def teacher_model_config(self, cfg):
        """The part of a teacher's config that decides its outputs (for a teacher-output cache's fingerprint;
        weight paths are left out: the weights themselves are hashed)."""
        def strip(value):
            if isinstance(value, dict):
                return {k: strip(v) for k, v in value.items()
                        if k not in ("pretrained", "weights", "pretrain_weights")}
            if isinstance(value, list):
                return [strip(v) for v in value]
            return value
        return strip({k: v for k, v in cfg.items() if k not in self.non_model_keys})

    def data_config(self, cfg):
        """The config of the training data and its transforms (for a teacher-output cache's fingerprint)."""
        return cfg.get("train_dataset")

    # ----- data -----------------------------------------------------------------------------------
    def build_dataset(self, cfg, mode):
        """A `paddle.io.Dataset` for mode 'train' or 'val'."""
        raise NotImplementedError

    def collate_fn(self, mode):
        """A collate function for `paddle.io.DataLoader`, or None for the default one."""
        return None

    def model_inputs(self, batch, mode="train"):
        """(args, kwargs) to call the model with on a collated batch."""
        raise NotImplementedError

    def set_epoch(self, epoch):
        """The trainer's epoch (0-based), given before each step, for models whose training forward reads
        it (e.g. PP-YOLOE's `epoch_id`: its static assigner's epochs)."""

    def distill_label(self, batch):
        """The ground truth handed to distillation losses that use it (masking, DKD), or None."""
        return None

    def batch_size_of(self, batch):
        raise NotImplementedError

    # ----- loss and evaluation --------------------------------------------------------------------
    def build_task_loss(self, cfg):
        """A callable (model_output, batch) -> OrderedDict of named, already weighted loss terms."""
        raise NotImplementedError

    def evaluate(self, model, dataset, cfg, log=print):
        """Evaluate `model` on `dataset`; returns an OrderedDict of metrics, the primary one included."""
        raise NotImplementedError

    # ----- inference tools ------------------------------------------------------------------------
    def export_input_spec(self, cfg, input_shape=None):
        """`paddle.static.InputSpec`s of the exported model's inputs."""
        raise NotImplementedError(f"export is not available for the {self.name} task")

    def export_model(self, model, cfg):
        """The layer to export (a wrapper when the deployed model should return something else)."""
        return model

    def exported_model(self, run, cfg):
        """A stand-in for the model in `evaluate` that computes with an exported model: `run` takes the inputs of
        `export_input_spec` as numpy arrays and returns the exported model's outputs as numpy arrays (Paddle
        Inference, slim/quant/inference.py). Tasks whose `evaluate` calls the model otherwise override this."""
        return ExportedModel(run)

    def predict_files(self, model, cfg, paths, out_dir, log=print):
        """Run the model on image files and write visualisations under out_dir."""
        raise NotImplementedError(f"prediction is not available for the {self.name} task")

    def save_eval_outputs(self, out_dir, log=print):
        """Write what the last `evaluate` computed beyond its metrics (e.g. classification embeddings as
        .npy) into out_dir; returns the paths written. Called by tools/eval.py and for each new best_model/."""
        return []

    def describe_metrics(self, metrics):
        """One log line for a metrics dict."""
        return " ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if isinstance(v, float))

    def run_name(self, cfg):
        """A short model name for run folders (e.g. 'deeplabv3p_resnet18_vd')."""
        model = cfg.get("model") or {}
        parts = [str(model.get("type", self.name))]
        backbone = model.get("backbone")
        if isinstance(backbone, dict) and backbone.get("type"):
            parts.append(str(backbone["type"]))
        return "_".join(parts).lower()


class ExportedModel:
    """An exported model called like the dygraph one in `evaluate`: paddle tensors in, paddle tensors out (one
    output as a tensor, several as a tuple); it has no training mode."""
    training = False

    def __init__(self, run):
        self.run = run

    def __call__(self, *inputs):
        import paddle
        outputs = [paddle.to_tensor(o) for o in self.run([x.numpy() for x in inputs])]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def weighted_terms(named_losses):
    """An OrderedDict from (name, weighted tensor) pairs, keeping order."""
    return OrderedDict(named_losses)
