"""How the training commands run QAT: the flags, the config sections, the student, and `--teacher self`.

    python tools/train.py -c S.yml --quant_config Q.yml --init_weights output/student/best_model/model.pdparams
    python slim/distill/distill_train.py -c S.yml -t T.yml --quant_config Q.yml      # QAT student, fp32 teacher
    python slim/distill/distill_train.py -c S.yml --teacher self --quant_config Q.yml   # ACT's recipe
    python tools/train.py -c S.yml --slim_config configs/det/slim/yolov3_mobilenet_v1_trees_qat.yml   # ppdet

`--quant_config Q.yml` holds a `quant:` section (qat.py lists its keys), or is written as PaddleDetection's
`slim: QAT` config (then it is merged into the student config as ppdet merges it: its `pretrain_weights` (the
fp32 model), `epoch`, `LearningRate`, ... apply, and `QAT.quant_config` is the `quant:` section) or as a
PaddleClas config's `Slim: {quant: {name: pact}}`. It replaces a `quant:` the student config has.

The student is quantised after its starting weights load (fp32 weights: `--init_weights`, `pretrain_weights`,
`model.pretrained`, ...); a QAT checkpoint given as starting weights is loaded into the quantised model instead
(its scales load too). Checkpoints of a QAT run hold the quantised model's state dict (fake-quant scales and
their moving-average state included), so resuming, `--resume_model auto` and evaluation need the same quant
settings: a QAT checkpoint met without them is an error naming --quant_config.

`--teacher self` (or `teacher: self` in the student config) distils from a frozen fp32 copy of the student's
starting weights, as PaddleSlim's ACT distils a quantised model from its fp32 self; with no pairs given, the
task's outputs are compared: KL on the logits (classification, segmentation) or the YOLOv3 default
(detection), and the log says which.

QAT trains in fp32: `--precision fp16|bf16` with QAT is an error (Paddle's fake-quant kernels keep their
scales in fp32 and are not on autocast's lists; mixed precision around them is untested here).
"""
import copy
import os

from slim.distill.config import apply_overrides, parse_yaml_with_bases, register_config_keys
from slim.distill.errors import ConfigError
from .qat import (QUANT_FLAG, is_quantized, quant_section_of, quant_settings, quantize_model, state_is_quantized,
                  weights_order)

register_config_keys("quant", "teacher")

SELF = "self"
#: the extra key a quant section may hold (ppdet's QAT.print_model): not a QAT setting
PRINT_MODEL = "print_model"


def add_quant_flags(parser, teacher=True):
    parser.add_argument(QUANT_FLAG, default=None, metavar="Q.yml",
                        help="quantisation-aware training of the student: a yaml with a `quant:` section (PaddleSlim's "
                             "QAT keys), or PaddleDetection's `slim: QAT` config; replaces the config's `quant:`")
    if teacher:
        parser.add_argument("--teacher", choices=(SELF,), default=None,
                            help="`self`: distil from a frozen fp32 copy of the student's starting weights (ACT's "
                                 "recipe for QAT); same as `teacher: self` in the student config")
    return parser


# ----- the quant config file --------------------------------------------------------------------------
def apply_quant_config(path, task, cfg, opts=(), log=print):
    """The student config with the QAT settings of `--quant_config PATH` (see the module docstring); `opts`
    (the command line's -o and flags) are applied again after a ppdet merge, so they keep their priority."""
    if not path:
        return cfg
    raw = parse_yaml_with_bases(path)
    cfg = copy.deepcopy(cfg)
    if raw.get("slim") is not None:
        if raw.get("slim") != "QAT":
            raise ConfigError(f"{QUANT_FLAG} {path}: `slim: {raw.get('slim')}` is not a quantisation config; give a "
                              f"yaml with a `quant:` section or PaddleDetection's `slim: QAT` config (a `slim: Distill` "
                              f"config goes to --slim_config).")
        slim = task.slim_config(cfg, path)
        cfg = apply_overrides(slim.student_cfg, list(opts))
        for note in slim.notes:
            log(note)
        return cfg
    section, where = quant_section_of(raw)
    if section is None:
        raise ConfigError(f"{QUANT_FLAG} {path} has no `quant:` section; write e.g.\n  quant:\n    "
                          f"weight_quantize_type: channel_wise_abs_max\n    activation_quantize_type: "
                          f"moving_average_abs_max\n(or give PaddleDetection's `slim: QAT` config).")
    extra = [k for k in raw if k not in ("quant", "Slim")]
    if extra:
        raise ConfigError(f"{QUANT_FLAG} {path}: only the `quant:` section is read from it, but it also has "
                          f"{', '.join(extra)}; put those in the training config (or -o).")
    quant_settings(section, f"{path}: {where}")  # its errors name the file
    section = dict(section) if isinstance(section, dict) else section
    owner = cfg.setdefault("Slim", {}) if task.name == "ppcls" else cfg
    old, _ = quant_section_of(cfg)
    if old is not None:
        log(f"{QUANT_FLAG} {path}: its quant settings replace those of the config")
    if task.name == "ppcls":
        cfg.pop("quant", None)
    owner["quant"] = section
    return cfg


def is_qat_slim_config(path):
    """Whether a `--slim_config` file is PaddleDetection's quantisation config (`slim: QAT`)."""
    return bool(path) and parse_yaml_with_bases(path).get("slim") == "QAT"


def prepare_config(args, task, cfg, opts=(), log=print):
    """The student config with the run's QAT settings: `--quant_config`, or a `--slim_config` that is ppdet's
    `slim: QAT` config (then read as --quant_config, and args.slim_config is cleared: there is no teacher in
    it)."""
    slim = getattr(args, "slim_config", None)
    if is_qat_slim_config(slim):
        if getattr(args, "quant_config", None):
            raise ConfigError(f"--slim_config {slim} is a quantisation config (slim: QAT) and {QUANT_FLAG} gives "
                              f"another; give one. (A distillation slim config and a quant config go together as "
                              f"--slim_config D.yml {QUANT_FLAG} Q.yml.)")
        args.slim_config, args.quant_config = None, slim
    return apply_quant_config(getattr(args, "quant_config", None), task, cfg, opts, log)


def settings_of(cfg):
    """The QAT settings of a (student) config, or None."""
    section, where = quant_section_of(cfg)
    return None if section is None else quant_settings(section, where)


def print_model_wanted(cfg):
    section, _ = quant_section_of(cfg)
    return isinstance(section, dict) and bool(section.get(PRINT_MODEL))


# ----- the student ------------------------------------------------------------------------------------
def _local_state_keys(task, path, key):
    """The tensor names of a local weights file (None for URLs and missing files: those are not read here).
    PaddleClas's prefix form (`output/x/best_model` for best_model.pdparams) is accepted."""
    from slim.engine import weights
    if not path or weights.is_url(str(path)):
        return None
    from slim.engine.checkpoint import read_model_state, resolve_weights_path
    path = str(path)
    if not os.path.exists(path) and os.path.isfile(path + ".pdparams"):
        path += ".pdparams"
    try:
        resolved = resolve_weights_path(path, key)
    except ConfigError:
        return None
    return list(read_model_state(resolved, key))


def prepare_for_weights(task, model, cfg, path, key, log=print):
    """Before trained weights load for evaluation or export: quantise `model` when they are a QAT checkpoint
    (with the config's `quant:` / Slim.quant or --quant_config settings); a QAT checkpoint without settings,
    or quant settings with fp32 weights, is a ConfigError naming --quant_config."""
    keys = _local_state_keys(task, path, key)
    settings = settings_of(cfg)
    if keys is None:
        if settings is not None:
            quantize_model(quant_target(task, model), settings, log=log)
        return model
    if weights_order(keys, settings, f"The weights {path} ({key})", training=False) == "before":
        quantize_model(quant_target(task, model), settings, log=log)
    return model


def quant_target(task, model):
    """The layer QAT wraps: the whole model, or the one a task names (PaddleClas: the infer_model_name model of a
    DistillationModel; its frozen teachers stay fp32)."""
    pick = getattr(task, "quant_target", None)
    return pick(model) if callable(pick) else model


def starting_weights(task, cfg, init_weights=None):
    """(the weights a student starts from, the flag or key naming them): --init_weights, else the config's."""
    if init_weights:
        return init_weights, "--init_weights"
    start = task.init_weights_path(cfg) or (cfg.get("pretrain_weights") if task.name == "det" else None)
    return start, ("pretrain_weights" if task.name == "det" and not task.init_weights_path(cfg)
                   else task.pretrained_key)


class StudentQuant:
    """QAT of one student while it is built: `before_weights()` quantises now when the starting weights are a
    QAT checkpoint, `after_weights()` quantises fp32 weights once loaded."""

    def __init__(self, task, model, cfg, init_weights=None, log=print):
        self.task, self.model, self.cfg, self.log = task, model, cfg, log
        self.init_weights = init_weights
        self.settings = settings_of(cfg)
        self.done = False

    def _order(self):
        start, key = starting_weights(self.task, self.cfg, self.init_weights)
        keys = _local_state_keys(self.task, start, key)
        order = None if keys is None else weights_order(keys, self.settings, f"The starting weights {start}")
        return "after" if order is None and self.settings is not None else order

    def quantize(self):
        if self.settings is None or self.done:
            return self.model
        target = quant_target(self.task, self.model)
        if print_model_wanted(self.cfg):
            self.log(f"Model before quant:\n{target}")
        quantize_model(target, self.settings, log=self.log)
        if print_model_wanted(self.cfg):
            self.log(f"Quantized model:\n{target}")
        if target is not self.model:
            name = next((n for n, layer in self.model.named_sublayers() if layer is target), type(target).__name__)
            self.log(f"QAT applies to {name} only; the other models stay fp32")
        self.done = True
        return self.model

    def before_weights(self):
        if self._order() == "before":
            self.log("the starting weights are a QAT checkpoint: the student is quantised before they load")
            self.quantize()
        return self

    def after_weights(self):
        return self.quantize()


def check_resume(resume_model, student, save_dir=None):
    """Before resuming: a QAT checkpoint needs a quantised student and an fp32 one a plain student, else a
    ConfigError naming the flag (what check_resumable would report as missing/unexpected tensors)."""
    from slim.distill.adaptor import unwrap
    from slim.engine.checkpoint import MODEL_FILE, iter_checkpoints
    if not resume_model:
        return
    if isinstance(resume_model, str) and resume_model.lower() == "auto":
        found = iter_checkpoints(save_dir) if save_dir else []
        if not found:
            return
        path = found[-1][1]
    else:
        path = resume_model
    file = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(file):
        return  # check_resumable says what is wrong with the folder
    import paddle
    try:
        state = paddle.load(file)
    except Exception:
        return  # a truncated file: check_resumable and --resume_model auto report it
    quantized_ckpt = state_is_quantized(state)
    quantized_model = is_quantized(unwrap(student))
    if quantized_ckpt and not quantized_model:
        raise ConfigError(f"Checkpoint {path} is of a quantisation-aware (QAT) run (its weights hold fake-quant "
                          f"scales), but this run's student is not quantised: pass the same {QUANT_FLAG} Q.yml (or "
                          f"`quant:` section; PaddleClas: `Slim.quant`) as the run that wrote it. Nothing in --save_dir "
                          f"was changed.")
    if quantized_model and not quantized_ckpt:
        raise ConfigError(f"Checkpoint {path} is of an fp32 run (no fake-quant scales), but this run quantises the "
                          f"student: a QAT run cannot continue it. Start QAT from its weights with --init_weights "
                          f"{file} in another --save_dir, or drop {QUANT_FLAG} to resume the fp32 run.")


def check_precision(student, precision):
    from slim.distill.adaptor import unwrap
    if precision and precision != "fp32" and is_quantized(unwrap(student)):
        raise ConfigError(f"--precision {precision} with quantisation-aware training is not supported: QAT trains in "
                          f"fp32 here (the fake-quant ops keep fp32 scales and are not on autocast's lists). Drop "
                          f"--precision (and AMP settings), or train without {QUANT_FLAG}.")


# ----- --teacher self ---------------------------------------------------------------------------------
def self_teacher_wanted(args, cfg):
    """`--teacher self` or the config's `teacher: self` (any other value of `teacher:` is an error)."""
    value = cfg.get("teacher") if isinstance(cfg, dict) else None
    if value is not None and value != SELF:
        raise ConfigError(f"`teacher: {value!r}` in the student config: the only value is `self` (a frozen fp32 copy "
                          f"of the student's starting weights); give another teacher with -t/--teacher_config.")
    return getattr(args, "teacher", None) == SELF or value == SELF


def without_quant(cfg):
    """A copy of the config without its QAT section (the fp32 student of `--teacher self`)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop("quant", None)
    if isinstance(cfg.get("Slim"), dict):
        cfg["Slim"].pop("quant", None)
    return cfg


def check_self_start(task, cfg, init_weights=None):
    """`--teacher self` copies fp32 starting weights: a QAT checkpoint as the start is an error."""
    start, key = starting_weights(task, cfg, init_weights)
    keys = _local_state_keys(task, start, key)
    if keys is not None and state_is_quantized(keys):
        raise ConfigError(f"--teacher self copies the student's fp32 starting weights, but {start} ({key}) is a QAT "
                          f"checkpoint; start from the fp32 model's weights (QAT is applied to the student after they "
                          f"load).")


def quantize_student(task, model, cfg, log=print):
    """Quantise a built student whose fp32 weights are loaded (no-op without QAT settings)."""
    return StudentQuant(task, model, cfg, None, log).quantize()


def self_teacher(task, cfg, student, log=print):
    """A frozen fp32 copy of `student` (built from the same config, every tensor copied), before QAT wraps it."""
    from slim.distill.distiller import freeze_teacher
    from slim.engine.checkpoint import apply_state
    if is_quantized(student):
        raise ConfigError("--teacher self copies the student's fp32 starting weights, but the student is already "
                          "quantised (its starting weights are a QAT checkpoint); start from fp32 weights, or give "
                          "the fp32 model as the teacher with -t/--teacher_config and --teacher_pretrained.")
    with task.logging_to(lambda *a, **k: None):
        teacher = task.build_model(cfg)
    apply_state(teacher, student.state_dict(), "the student's starting weights (--teacher self)")
    log("--teacher self: the teacher is a frozen fp32 copy of the student's starting weights")
    return freeze_teacher(teacher)


def self_default_pairs(task, cfg):
    """(pairs, why) for `--teacher self` when the configs give none: the task's default for a teacher of the
    same config (detection: YOLOv3's), else KLLoss on the logits."""
    pairs, why = task.default_pairs(cfg, cfg)
    if pairs:
        return pairs, f"--teacher self: {why}"
    if task.name == "det":
        raise ConfigError(f"--teacher self: no distillation terms given and no default for a {cfg.get('architecture')} "
                          f"detector (the default is YOLOv3's); add a `distill:` list of pairs to the student config.")
    ref = task.logits_ref(cfg)
    spec = {"name": "distill_KLLoss", "student": layer_ref_spec(ref), "teacher": layer_ref_spec(ref),
            "loss": {"type": "KLLoss"}, "weight": 1.0}
    return [spec], (f"--teacher self and no distillation terms given: KLLoss (temperature 1) between the QAT "
                    f"student's logits ({ref.describe()}) and its fp32 copy's, weight 1")


def layer_ref_spec(ref):
    """A LayerRef as the `student:` / `teacher:` mapping of a yaml pair."""
    spec = {"layer": ref.layer, "io": ref.io}
    if ref.idx is not None:
        spec["idx"] = ref.idx
    if ref.call is not None:
        spec["call"] = ref.call
    return spec
