"""PaddleClas `Arch:` sections -> Paddle Layers built from the paddleclas wheel's `ppcls.arch.backbone`.

    Arch: {name: ResNet50_vd, class_num: 100, pretrained: False}          # one model: the backbone itself
    Arch:                                                                  # several models: DistillationModel
      name: DistillationModel
      class_num: 10                     # reaches every sub-model that sets no class_num of its own
      freeze_params_list: [True, False] # True: frozen (no gradient, run under no_grad)
      frozen_mode: eval                 # eval (default): frozen models in eval mode; train: as PaddleClas (below)
      infer_model_name: Student         # what evaluation reports first, export writes, best_model is chosen by
      models:
        - Teacher: {name: ResNet34, pretrained: output/teacher/best_model, return_patterns: ["blocks[15]"]}
        - Student: {name: ResNet18, pretrained: False}

Importing ppcls: the PyPI wheel `paddleclas==2.6.0` (installed with --no-deps) holds `paddleclas/ppcls/arch`
and `paddleclas/ppcls/utils`; its top-level `paddleclas` package imports faiss. `import_ppcls()` puts the folder
holding `ppcls/` on sys.path without importing `paddleclas` (a PaddleClas checkout already importable as
`ppcls` is used as it is) and initialises ppcls's logger (its models log through it).

Frozen models' mode: PaddleClas only sets their parameters untrainable and trains the whole DistillationModel in
train mode, so a frozen teacher's BatchNorm normalises every batch with that batch's statistics (its outputs depend
on the batch), keeps updating its running statistics from the student's data (the saved teacher changes), and its
dropout is on. Here a frozen model runs in eval mode by default: the teacher gives the outputs it was evaluated
with, whatever the batch (which a teacher-output cache needs). `Arch.frozen_mode: train` runs it as PaddleClas does
(PaddleClas passes the unknown Arch key to its DistillationModel, which ignores it: the config runs there too).

The DistillationModel here is this package's own Layer (not ppcls.arch.distill): sub-models are sublayers
named as in the config, so its weights are keyed `Teacher.*`, `Student.*` as PaddleClas's are. Intermediate
outputs (`return_patterns`, and every `key`/`s_key`/`t_key` the losses read) are captured by forward hooks
(slim/distill/adaptor.py FeatureRecorder); PaddleClas's `blocks[2]` is the sublayer `blocks.2`. A model with
captures returns `{"logits": ..., "blocks[2]": ...}` as TheseusLayer does; the DistillationModel returns
`{model name: output}`.
"""
import importlib
import importlib.util
import os
import re
import sys
from collections import OrderedDict

import paddle
import paddle.nn as nn

from slim.distill.adaptor import FeatureRecorder, LayerRef
from slim.distill.errors import ConfigError, LayerNotFoundError

PIP = "paddleclas==2.6.0"
DISTILLATION_MODELS = ("DistillationModel",)
_ppcls_backbone = None


def import_ppcls():
    """`ppcls.arch.backbone` (PaddleClas's models) without the faiss dependency of the `paddleclas` package."""
    global _ppcls_backbone
    if _ppcls_backbone is not None:
        return _ppcls_backbone
    if importlib.util.find_spec("ppcls") is None:
        spec = importlib.util.find_spec("paddleclas")  # finds the folder, does not run its __init__
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"PaddleClas configs need PaddleClas's models: `pip install --no-deps {PIP}` "
                              f"(or `make install`, which installs requirements-nodeps.txt).")
        folder = list(spec.submodule_search_locations)[0]
        if not os.path.isdir(os.path.join(folder, "ppcls", "arch")):
            raise ConfigError(f"{folder} holds no ppcls/arch; reinstall it: `pip install --no-deps {PIP}`.")
        sys.path.append(folder)
    from ppcls.utils import logger
    logger.init_logger()  # its models log through it; without it the first log line fails
    _ppcls_backbone = importlib.import_module("ppcls.arch.backbone")
    return _ppcls_backbone


def known_backbones():
    bb = import_ppcls()
    return sorted(n for n in dir(bb) if not n.startswith("_") and callable(getattr(bb, n)) and n[0].isupper())


def backbone_factory(name):
    bb = import_ppcls()
    fn = getattr(bb, str(name), None)
    if fn is None or not callable(fn):
        import difflib
        close = difflib.get_close_matches(str(name), known_backbones(), n=5, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ConfigError(f"Arch name {name!r} is not a model of ppcls.arch.backbone ({PIP}).{hint} "
                          f"Multi-model configs use `name: DistillationModel`.")
    return fn


def model_url(name, use_ssld=False):
    """The ImageNet weights `pretrained: True` means: the backbone module's MODEL_URLS[name] (SSLD file when
    use_ssld), as PaddleClas's `load_dygraph_pretrain` picks it."""
    fn = backbone_factory(name)
    urls = getattr(sys.modules[fn.__module__], "MODEL_URLS", {})
    url = urls.get(name)
    if not url:
        raise ConfigError(f"{name} has no ImageNet weights in {PIP} (its MODEL_URLS has no entry {name!r}); set "
                          f"pretrained to a local .pdparams path or False.")
    if use_ssld and "ssld" not in url:
        url = url.replace("_pretrained", "_ssld_pretrained")
    return url


def layer_name(pattern):
    """PaddleClas's pattern `blocks[2].conv` -> the sublayer name `blocks.2.conv`."""
    return re.sub(r"\[(\d+)\]", r".\1", str(pattern)).strip(".")


def _layer_list(model, depth=2):
    names = [n for n, _ in model.named_sublayers() if n.count(".") < depth]
    shown = ", ".join(names[:40]) + (f" (+{len(names) - 40} more)" if len(names) > 40 else "")
    return shown


def make_recorder(model, patterns, model_name):
    """A FeatureRecorder for PaddleClas patterns; an unknown name is one error listing the model's layers."""
    refs = {}
    for p in patterns:
        ref = LayerRef(layer_name(p))
        try:
            rec = FeatureRecorder(model, [ref])
            rec.remove()
        except LayerNotFoundError as e:
            raise ConfigError(f"{model_name} ({type(model).__name__}) has no layer {p!r} (return_patterns or a "
                              f"loss key): {str(e).split(' List every')[0]} Its layers (PaddleClas writes "
                              f"blocks.2 as blocks[2]): {_layer_list(model)}") from None
        refs[str(p)] = ref
    return refs, FeatureRecorder(model, list(refs.values()))


def run_with_captures(model, x, refs, recorder):
    if recorder is None:
        return model(x)
    recorder.clear()
    logits = model(x)
    if isinstance(logits, dict):
        logits = logits.get("logits", next(iter(logits.values())))
    out = {"logits": logits}
    for key, ref in refs.items():
        out[key] = recorder.get(ref)
    return out



FROZEN_MODES = ("eval", "train")


class DistillationModel(nn.Layer):
    """Named sub-models (sublayers `Teacher`, `Student`, ...); frozen ones run under no_grad, in eval mode (or, with
    frozen_mode "train", in the mode of the whole model, as PaddleClas runs them).
    forward(x) -> {name: logits or {'logits': ..., pattern: ...}}."""

    def __init__(self, names, models, frozen, infer_model_name, patterns=None, frozen_mode="eval"):
        super().__init__()
        if frozen_mode not in FROZEN_MODES:
            raise ConfigError(f"Arch.frozen_mode must be eval (frozen models in eval mode) or train (as PaddleClas: "
                              f"BatchNorm with batch statistics), got {frozen_mode!r}")
        self.model_names = list(names)
        self.frozen = {n: bool(f) for n, f in zip(names, frozen)}
        self.infer_model_name = infer_model_name
        self.frozen_mode = frozen_mode
        for name, model in zip(names, models):
            self.add_sublayer(name, model)
            if self.frozen[name]:
                model.eval()
                for p in model.parameters():
                    p.stop_gradient = True
        self._captures = {}
        for name in names:
            wanted = list(dict.fromkeys((patterns or {}).get(name) or []))
            if wanted:
                self._captures[name] = make_recorder(self.sub(name), wanted, name)

    def sub(self, name):
        return self._sub_layers[name]

    def remove_captures(self):
        for _, rec in self._captures.values():
            rec.remove()
        self._captures = {}

    # ----- the frozen models' tensors for a teacher-output cache (slim/engine/teacher_cache.py) ---------------
    def frozen_names(self):
        return [n for n in self.model_names if self.frozen[n]]

    def _output_keys(self, name):
        """The tensors of a sub-model's output: None for plain logits, else 'logits' and the captured patterns."""
        refs = self._captures.get(name, (None, None))[0]
        return ["logits", *refs] if refs else [None]

    def teacher_tensor_names(self):
        return [f"{n}/{k}" if k else n for n in self.frozen_names() for k in self._output_keys(n)]

    def _run_frozen(self, name, x):
        model = self.sub(name)
        if model.training and self.frozen_mode == "eval":  # Layer.train() on a parent reaches it
            model.eval()
        refs, rec = self._captures.get(name, (None, None))
        with paddle.no_grad():
            return run_with_captures(model, x, refs, rec)

    def teacher_features(self, x):
        """OrderedDict `Name` (plain logits) or `Name/logits`, `Name/<pattern>` -> tensor, for every frozen model."""
        feats = OrderedDict()
        for name in self.frozen_names():
            out = self._run_frozen(name, x)
            for k in self._output_keys(name):
                feats[f"{name}/{k}" if k else name] = out[k] if k else out
        return feats

    def teacher_parts(self):
        from slim.engine.teacher_cache import layer_parts
        return layer_parts({n: self.sub(n) for n in self.frozen_names()})

    def teacher_parts_of(self, name):
        """The fingerprint of one frozen model (its own teacher-output cache when there are several)."""
        from slim.engine.teacher_cache import layer_parts
        return layer_parts({name: self.sub(name)})

    def _from_features(self, name, feats):
        keys = self._output_keys(name)
        return feats[name] if keys == [None] else {k: feats[f"{name}/{k}"] for k in keys}

    def forward(self, x, teacher_features=None):
        """teacher_features: the frozen models' tensors (teacher_features()), e.g. read from a teacher-output
        cache; the frozen models then do not run."""
        out = {}
        for name in self.model_names:
            model = self.sub(name)
            refs, rec = self._captures.get(name, (None, None))
            if self.frozen[name]:
                out[name] = (self._from_features(name, teacher_features) if teacher_features is not None
                             else self._run_frozen(name, x))
            else:
                out[name] = run_with_captures(model, x, refs, rec)
        losses = self._sub_layers.get("loss_layers")
        if losses is not None and self.training:
            # losses with parameters (MGD's generator) run here, inside forward: under DataParallel every trained
            # parameter must be used by the forward of the wrapped model; the loss reads the result by its key
            for loss in losses:
                out[loss.prepared_key] = loss.prepare(out)
        return out



def logits_of(out):
    return out["logits"] if isinstance(out, dict) else out


def infer_logits(model, out):
    """The logits of the model evaluation reports and export writes."""
    if isinstance(model, DistillationModel):
        return logits_of(out[model.infer_model_name])
    return logits_of(out)


def infer_layer(model):
    """The Layer export writes: the infer_model_name sub-model, or the plain model itself."""
    if isinstance(model, DistillationModel):
        return model.sub(model.infer_model_name)
    return model
