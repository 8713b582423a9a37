"""What `distill_train.py` and `tools/train.py` share: flags, config loading, models, the run.

Config priority, highest first: command-line flags and `-o key=value`, the yaml (with `_base_`), defaults.
Only `model` (and its `pretrained` weights) is read from the teacher config; data, loss, optimizer and
schedule come from the student config, as in PaddleSeg's distillation tutorial.
"""
import argparse
import math
import os
import sys

from slim.distill.config import load_config
from slim.distill.distiller import freeze_teacher
from slim.distill.errors import ConfigError, SlimError
from slim.tasks import get_task
from slim.engine import env
from slim.engine.amp import LEVELS, PRECISIONS
from slim.engine.checkpoint import check_resumable, check_save_dir_usable
from slim.engine.trainer import TrainOptions, Trainer
from slim.quant import training as quant_training


def _bounded(convert, minimum, what, example):
    """An argparse type: `convert(text)`, finite and >= minimum, else a message saying what is expected."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what} (e.g. {example}), got {text}")
        return value
    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _bounded(int, 1, "a positive integer (a whole number >= 1)", 100)
non_negative_int = _bounded(int, 0, "a whole number >= 0", 0)
non_negative_float = _bounded(float, 0.0, "a finite number >= 0", 0.01)


class _SkipVerify(argparse.Action):
    """--skip_verify: load checkpoints whose files differ from their manifest (checkpoint.py), at once for
    every load of this process."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from slim.engine.checkpoint import set_verify
        set_verify(False)
        setattr(namespace, self.dest, True)


def add_integrity_flags(parser):
    parser.add_argument("--skip_verify", action=_SkipVerify,
                        help="load weights and checkpoints even when their files differ from the manifest.json "
                             "saved with them (damaged or changed since); by default such a file is refused and "
                             "--resume_model auto skips its folder")
    return parser


def add_common_flags(parser):
    p = parser
    p.add_argument("--iters", type=positive_int, default=None, help="training iterations (overrides `iters`)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="train by epochs instead (overrides `epochs`)")
    p.add_argument("--batch_size", type=positive_int, default=None, help="batch size per process")
    p.add_argument("--learning_rate", type=non_negative_float, default=None, help="base learning rate")
    p.add_argument("--save_interval", type=positive_int, default=1000, help="checkpoint every N iterations")
    p.add_argument("--resume_model", "-r", default=None, help="checkpoint folder to resume (e.g. output/iter_500), or "
                   "`auto`: the newest complete one in --save_dir (a fresh start when there is none)")
    p.add_argument("--save_dir", default=None,
                   help="output folder (default: output/<models>/<settings>, named from the run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a --save_dir that holds another run: its checkpoints and logs are "
                        "moved into SAVE_DIR/previous_run_<N>/ first (nothing is deleted)")
    p.add_argument("--keep_checkpoint_max", type=int, default=5)
    p.add_argument("--num_workers", type=non_negative_int, default=0, help="data loading worker processes")
    p.add_argument("--do_eval", action="store_true", help="evaluate every save_interval and keep best_model/")
    p.add_argument("--eval_interval", type=positive_int, default=None, help="evaluate every N iterations "
                   "(default: save_interval)")
    p.add_argument("--log_iters", type=positive_int, default=10)
    p.add_argument("--use_vdl", action="store_true", help="write VisualDL scalars to SAVE_DIR/vdl")
    p.add_argument("--seed", type=non_negative_int, default=None)
    p.add_argument("--data_seed", type=non_negative_int, default=None,
                   help="seed of the sample order and the random augmentations (default: --seed); students of "
                        "several --seed values then see the same views (and share a --teacher_cache)")
    p.add_argument("--device", default=None, help="cpu, gpu or gpu:N (default: GPU when available)")
    p.add_argument("--init_weights", default=None, help="start the student from these weights")
    p.add_argument("--analyse", "--analyze", action="store_true", help="log the memory of a training step "
                   "(student, teacher, distillation), measured once at the start (costs about three steps)")
    add_precision_flags(p)
    quant_training.add_quant_flags(p)
    add_integrity_flags(p)
    p.add_argument("-o", "--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. -o batch_size=4 model.backbone.output_stride=16")
    return p


def add_precision_flags(parser):
    parser.add_argument("--precision", choices=PRECISIONS, type=str.lower, default=None,
                        help="fp32 (default), fp16 (with a dynamic loss scale) or bf16 for the student and the "
                             "teacher; losses stay in fp32. Where autocast does nothing (a CPU) the run says so "
                             "and trains in fp32")
    parser.add_argument("--amp_level", choices=LEVELS, type=str.upper, default=None,
                        help="O1 (default): white-listed ops in low precision; O2: the weights too (float32 "
                             "master weights in the optimizer)")
    parser.add_argument("--amp", action="store_true", default=None,
                        help="PaddleDetection's spelling of --precision fp16 (level O1 unless --amp_level)")


def precision_from_args(args):
    """(precision, level) from --precision, --amp_level and --amp; (None, None) for what was not given."""
    precision, level = getattr(args, "precision", None), getattr(args, "amp_level", None)
    if getattr(args, "amp", None):
        if precision not in (None, "fp16"):
            raise ConfigError(f"--amp means --precision fp16; it cannot be combined with --precision {precision}.")
        precision = "fp16"
    return precision, level


def flag_overrides(args, cfg_path):
    """The flags that change the config, as `-o` strings (they rank with -o above the yaml)."""
    opts = []
    if args.iters is not None:
        opts += [f"iters={args.iters}", "epochs=null"]
    if args.epochs is not None:
        opts += [f"epochs={args.epochs}", "iters=null"]
    if args.batch_size is not None:
        opts.append(f"batch_size={args.batch_size}")
    if args.learning_rate is not None:
        raw = load_config(cfg_path, check_keys=False).to_dict()
        where = "lr_scheduler.learning_rate" if raw.get("lr_scheduler") else "learning_rate"
        opts.append(f"{where}={args.learning_rate}")
    return opts + list(args.opts or [])


def load_task_config(path, opts=(), what="config"):
    """Load a config and pick its task; the task's own top-level keys are accepted."""
    raw = load_config(path, check_keys=False).to_dict()
    task = get_task(raw)
    # PaddleClas configs (Arch: + Global:): PaddleClas's -o (list indices, yaml values); slim/tasks/ppcls
    if task.name == "ppcls":
        from slim.tasks.ppcls import config as ppcls_config
        return task, ppcls_config.load(path, list(opts), log=task.log)
    from slim.distill.config import known_config_keys
    cfg = load_config(path, opts=list(opts), known_keys=known_config_keys() | set(task.config_keys))
    return task, cfg.to_dict()


def build_student(task, cfg, init_weights=None, log=print):
    """The student: `--init_weights` strictly, else the weights its config names (pretrained backbone,
    `model.pretrained`, ppdet's `pretrain_weights`) loaded as PaddleSeg / ppdet load them. With QAT settings
    (`quant:`, --quant_config) it is quantised after fp32 weights load, before a QAT checkpoint loads
    (slim/quant/training.py)."""
    with task.logging_to(log):
        model = task.build_model(cfg)
        quant = quant_training.StudentQuant(task, model, cfg, init_weights, log).before_weights()
        if init_weights:
            task.load_weights(model, init_weights, "student weights", key="--init_weights")
        else:
            task.load_pretrained(model, cfg)
        quant.after_weights()
    return model


def build_teacher(task, cfg, weights=None, allow_untrained=False, log=print, key=None):
    """The frozen teacher with its full weights (every parameter loaded, else an error naming the missing ones)."""
    with task.logging_to(log):
        model = task.build_model(cfg)
        key = key or ("--teacher_pretrained" if weights else task.pretrained_key)
        weights = weights or task.pretrained_path(cfg)
        if not weights:
            if not allow_untrained:
                raise ConfigError(
                    f"The teacher has no weights: set `{task.pretrained_key}` in the teacher config to its trained "
                    "model.pdparams (e.g. output/teacher/best_model/model.pdparams), or pass "
                    "--teacher_pretrained. Use --allow_untrained_teacher only to test the pipeline.")
            log("WARNING: the teacher has no trained weights (--allow_untrained_teacher): distillation from a "
                "random teacher only tests the pipeline.")
            return freeze_teacher(model)
        task.load_weights(model, weights, "teacher weights", key=key)
    return freeze_teacher(model)


def add_teacher_cache_flags(parser):
    p = parser
    p.add_argument("--teacher_cache", default=None, metavar="DIR",
                   help="store the teacher's tensors of each training sample in DIR, and read them from there in "
                        "later runs instead of running the teacher (see slim/engine/teacher_cache.py)")
    p.add_argument("--teacher_cache_dtype", choices=("float16", "float32"), default="float16",
                   help="storage of the cached tensors (default float16; float32 is exact)")
    p.add_argument("--teacher_cache_topk", type=positive_int, default=None, metavar="K",
                   help="classification: store the K largest logits of each sample and one value for the rest")
    p.add_argument("--teacher_cache_rebuild", action="store_true",
                   help="when DIR was filled for another teacher, data or settings: delete its entries and refill")
    p.add_argument("--teacher_cache_repair", action="store_true",
                   help="check every entry of DIR against its checksum before training and refill the damaged ones "
                        "(e.g. after copying the cache to another node; `slim-cache verify DIR` only reports)")


def teacher_source(task, teacher_cfg, weights=None, allow_untrained=False, log=print, key=None, student=None,
                   cfg=None, seed=None):
    """The teacher of a run with a teacher-output cache: its fingerprint now (the weights file hashed, fetched
    once when named by URL), the model built only when the trainer needs it (an entry is missing), then
    prepared with the student as usual. Built at once when the task changes the student from the teacher."""
    from slim.engine.teacher import TeacherSource
    from slim.engine.teacher_cache import file_part, part
    key = key or ("--teacher_pretrained" if weights else task.pretrained_key)
    path = weights or task.pretrained_path(teacher_cfg)
    with task.logging_to(log):
        if path:
            weights_part = file_part(task.local_weights(path, key))
        elif allow_untrained:
            weights_part = part(f"untrained (random initialisation from --seed {seed})")
        else:
            return build_teacher(task, teacher_cfg, weights, allow_untrained, log, key)  # its error
    parts = {"teacher weights": weights_part,
             "teacher model": part(f"{task.run_name(teacher_cfg)} config", task.teacher_model_config(teacher_cfg))}

    def build(log_to):
        teacher = build_teacher(task, teacher_cfg, weights, allow_untrained, log=log_to, key=key)
        if student is not None:
            task.prepare_pair(student, teacher, cfg, log=log_to)
        return teacher

    model = None
    if student is not None and task.pair_needs_teacher(cfg):
        model = build(log)
        log("teacher built before training: the student is prepared from it (head_from_teacher / "
            "embedding_projection); with the cache it still runs only for missing entries")
    return TeacherSource(build, parts, model)


def options_from_args(args, save_dir):
    precision, level = precision_from_args(args)
    return TrainOptions(save_dir=save_dir, log_iters=args.log_iters, save_interval=args.save_interval,
                        keep_checkpoint_max=args.keep_checkpoint_max, do_eval=args.do_eval,
                        eval_interval=args.eval_interval, use_vdl=args.use_vdl, num_workers=args.num_workers,
                        seed=args.seed, resume_model=args.resume_model,
                        overwrite=getattr(args, "overwrite", False), analyse=getattr(args, "analyse", False),
                        precision=precision or "fp32", amp_level=level or "O1",
                        data_seed=getattr(args, "data_seed", None),
                        teacher_cache=getattr(args, "teacher_cache", None),
                        teacher_cache_dtype=getattr(args, "teacher_cache_dtype", "float16"),
                        teacher_cache_topk=getattr(args, "teacher_cache_topk", None),
                        teacher_cache_rebuild=getattr(args, "teacher_cache_rebuild", False),
                        teacher_cache_repair=getattr(args, "teacher_cache_repair", False))


def _fmt_number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def run_folder_name(task, cfg, teacher_cfg=None, pairs=()):
    """output/<teacher>-<student>-<losses>/<lr>_<optimizer>_<schedule>_<length>_<warmup>_bs<N>."""
    student = task.run_name(cfg)
    if teacher_cfg is not None:
        losses = []
        for pair in pairs:
            name = pair.loss["type"].replace("Loss", "")
            t = pair.loss.get("temperature", pair.loss.get("tau"))
            name += f"-T{_fmt_number(t)}" if t is not None else ""
            if name not in losses:
                losses.append(name)
        teacher_cfgs = teacher_cfg if isinstance(teacher_cfg, (list, tuple)) else [teacher_cfg]  # several teachers
        teacher = "+".join(task.run_name(c) for c in teacher_cfgs)
        models = f"{teacher}-{student}-{'+'.join(losses) or 'distill'}"
        if cfg.get("head_from_teacher"):
            models += "-head_fixed"
    else:
        models = student
    cfg = task.training_settings(cfg)  # in the trainer's spelling (a task may translate, e.g. ppdet's sections)
    lr_cfg = cfg.get("lr_scheduler") or {}
    lr = lr_cfg.get("learning_rate", cfg.get("learning_rate", "?"))
    opt = (cfg.get("optimizer") or {}).get("type", "SGD")
    sched = lr_cfg.get("type", "constant")
    length = f"epochs{cfg['epochs']}" if cfg.get("epochs") else f"iters{cfg.get('iters')}"
    warm = lr_cfg.get("warmup_iters", lr_cfg.get("warmup_epochs", 0))
    settings = f"lr{_fmt_number(lr)}_{opt}_{sched}_{length}_warmup{warm}_bs{cfg.get('batch_size')}"
    return os.path.join("output", models, settings)


def run_main(main):
    """Run a CLI main(): user errors print one clear message and exit 2; Ctrl-C exits 130; a check that ends the
    command (--check, slim/engine/check.py) exits 0 when it flagged nothing, 3 when it flagged something."""
    from slim.engine.check_report import CheckFinished
    try:
        return main() or 0
    except CheckFinished as e:
        return e.exit_code
    except SlimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk where no writer named what it was writing (storage.py names most)
        from slim.engine.storage import disk_full, is_disk_full
        if not is_disk_full(e):
            raise
        where = e.filename or os.getcwd()
        print(f"error: {disk_full(where, 'a file' if e.filename else 'an output file')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C; a stop requested by a signal carries its own status (SIGTERM: 143)
        print(str(e) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)


def make_parser(description):
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def train(task, cfg, student, teacher=None, pairs=(), adaptors=(None, None), options=None, notes=(), hooks=(),
          task_loss=None):
    """Run the shared trainer; `hooks` are extra `slim.engine.hooks.Hook`s (e.g. a layer-removal schedule);
    `task_loss` replaces the task's loss terms (e.g. none: distillation alone, as ACT trains).

    Before anything is written: --save_dir must be a folder that can be written, and a checkpoint to
    resume must be complete and of this student (a wrong one fails here, leaving --save_dir untouched)."""
    if options is not None:
        check_save_dir_usable(options.save_dir)
        quant_training.check_precision(student, options.precision)
        quant_training.check_resume(options.resume_model, student, options.save_dir)
        check_resumable(options.resume_model, student, options.save_dir)
    return Trainer(task, cfg, student, teacher=teacher, pairs=pairs, adaptors=adaptors, options=options,
                   hooks=hooks, notes=notes, task_loss=task_loss).train()


def setup_process(args):
    """Device, threads and seeds, before any model is built (model initialisation draws random numbers)."""
    env.set_device(args.device)
    env.seed_everything(args.seed)
