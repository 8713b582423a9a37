"""Distil a teacher into a student: the PaddleSeg tutorial's command, for every task.

    python slim/distill/distill_train.py --teacher_config T.yml --student_config S.yml \
        --do_eval --use_vdl --save_interval 250 --seed 0 --save_dir output/distill
    python -m paddle.distributed.launch --nproc_per_node 2 slim/distill/distill_train.py ...

    python slim/distill/distill_train.py --pipeline configs/depth/multistage_flow.yml   # stages

    python slim/distill/distill_train.py -c student.yml --slim_config distill.yml       # PaddleDetection's form

    python slim/distill/distill_train.py -c student.yml -t teacher.yml --quant_config Q.yml   # QAT student
    python slim/distill/distill_train.py -c student.yml --teacher self --quant_config Q.yml   # from its fp32 self

The task (segmentation, detection, classification) is read from the student config. The teacher's
weights come from its `model.pretrained` (or --teacher_pretrained). Distillation terms come from the
student config's `distill_loss` (on logits) and `distill:` pairs, and from the adaptors and
`prepare_distill_config()` in slim/distill/distill_config.py; when there are none, the task may choose a
default (detection: L2 on the three YOLOv3 head outputs). With `--slim_config` (a task's own distillation
config, PaddleDetection's), the teacher's config, its weights and the method come from that file instead.
With `--quant_config` (or a `quant:` section) the student trains quantisation-aware against the fp32 teacher;
`--teacher self` makes the teacher a frozen fp32 copy of the student's starting weights (slim/quant/training.py).
"""
import sys


from slim.distill.errors import ConfigError
from slim.distill.distill_token import distill_token_pairs
from slim.distill.pairs import logit_pairs, parse_pairs
from slim.quant import training as quant_training
from . import check, launch, teachers


def parse_args(argv=None):
    p = launch.make_parser(__doc__)
    p.add_argument("--student_config", "-c", "--config", dest="student_config", required=True)
    p.add_argument("--teacher_config", "--teather_config", "-t", dest="teacher_config", default=None,
                   action=teachers.AppendKeepFirst,
                   help="teacher config (only its `model` is used); --teather_config is accepted too; repeat it for "
                        "several teachers, named t1, t2, ... (slim/apps/teachers.py)")
    add_slim_config_flag(p)
    p.add_argument("--teacher_pretrained", default=None, action=teachers.AppendKeepFirst,
                   help="teacher weights (overrides model.pretrained); with several -t, one per teacher in order")
    p.add_argument("--allow_untrained_teacher", action="store_true",
                   help="run with a randomly initialised teacher (pipeline tests only)")
    launch.add_teacher_cache_flags(p)
    check.add_check_flags(p)
    p.add_argument("--pipeline", default=None, metavar="P.yml",
                   help="run a pipeline of stages instead (see slim/apps/pipeline.py; `--pipeline P.yml --help`)")
    launch.add_common_flags(p)
    return p.parse_args(argv)


def add_slim_config_flag(parser):
    from . import teachers
    parser.add_argument("--slim_config", default=None, metavar="DISTILL.yml", action=teachers.AppendKeepFirst,
                        help="PaddleDetection's distillation config: it `_BASE_`s the teacher's config and sets "
                             "pretrain_weights (the teacher's weights), slim: Distill, slim_method, distill_loss; "
                             "repeat it for several teachers, named s1, s2, ...")


def distill_pairs(task, cfg, teacher_cfg=None, extra=(), notes=None, default=None, origins=None):
    """Logit terms (`distill_loss`), yaml pairs (`distill:`), the tutorial's distill_config.py pairs and
    `extra` (a slim config's, whose weights are set where `origins` says: pair name -> text); with none of them,
    `default()` -> (pairs, why) when given, else the task's default pairs for this teacher, if any."""
    from slim.distill import distill_config
    pairs = logit_pairs(cfg.get("distill_loss"), task.logits_ref(cfg))
    # DeiT's distillation head against the teacher's logits, where the teacher's config has them
    pairs += distill_token_pairs(cfg.get("distill_token"), task.logits_ref(cfg if teacher_cfg is None else teacher_cfg))
    pairs += parse_pairs(cfg.get("distill") or [])
    pairs += parse_pairs(distill_config.prepare_distill_config() or [])
    slim_pairs = parse_pairs(list(extra))
    for pair in slim_pairs:
        pair.origin = (origins or {}).get(pair.name, pair.origin)
    pairs += slim_pairs
    if not pairs and (teacher_cfg is not None or default is not None):
        chosen, why = default() if default is not None else task.default_pairs(cfg, teacher_cfg)
        pairs = parse_pairs(chosen or [])
        if pairs and why and notes is not None:
            notes.append(why)
        for pair in pairs:
            pair.origin = ("the task's default pairs: write them as a `distill:` list in the student config to set "
                           "each weight")
    names = [p.name for p in pairs]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"Two distillation terms are both named {duplicated}; give them distinct `name`s.")
    if not pairs:
        raise ConfigError("Nothing to distil: add `distill_loss: {types: [{type: KLLoss}], coef: [3]}` or a "
                          "`distill:` list of pairs to the student config, or fill prepare_distill_config() "
                          "in slim/distill/distill_config.py.")
    return pairs, distill_config.prepare_distill_adaptor()


def teacher_from_slim_config(task, cfg, path, notes, origins=None):
    """(student config, teacher config, teacher weights, extra pairs) from a task's `--slim_config`; `origins`
    (a dict) receives where each pair's weight is set."""
    slim = task.slim_config(cfg, path)
    notes.extend(slim.notes)
    if origins is not None:
        origins.update(getattr(slim, "origins", {}))
    return slim.student_cfg, slim.teacher_cfg, slim.weights, slim.pairs


def run(args, task, cfg, allow_untrained=False, notes=None):
    """Distil with the parsed flags: the teacher from -t, from --slim_config, or the student itself
    (`--teacher self`)."""
    notes = [] if notes is None else notes
    several = teachers.wanted(args, cfg)
    if several is not None:
        return teachers.run(args, task, cfg, several, allow_untrained, notes)
    extra, weights, key, origins = [], getattr(args, "teacher_pretrained", None), None, {}
    self_teacher = quant_training.self_teacher_wanted(args, cfg)
    if self_teacher:
        given = [f for f, v in (("-t/--teacher_config", getattr(args, "teacher_config", None)),
                                ("--slim_config", args.slim_config), ("--teacher_pretrained", weights)) if v]
        if given:
            raise ConfigError(f"--teacher self (or `teacher: self`) and {', '.join(given)} both name a teacher; give "
                              f"one.")
        teacher_cfg = cfg
    elif args.slim_config:
        if getattr(args, "teacher_config", None):
            raise ConfigError("Give the teacher either with --slim_config (PaddleDetection's form) or with "
                              "-t/--teacher_config, not both.")
        cfg, teacher_cfg, slim_weights, extra = teacher_from_slim_config(task, cfg, args.slim_config, notes, origins)
        if not weights:
            weights, key = slim_weights, "pretrain_weights (of --slim_config)"
    else:
        if not getattr(args, "teacher_config", None):
            raise ConfigError("No teacher: give its config with -t/--teacher_config (or PaddleDetection's "
                              "--slim_config).")
        teacher_task, teacher_cfg = launch.load_task_config(args.teacher_config)
        if teacher_task.name != task.name:
            raise ConfigError(f"The teacher config is a {teacher_task.name} model but the student config is "
                              f"{task.name}: both must be the same task.")
    teacher_cfg = task.prepare_teacher_config(cfg, teacher_cfg)
    task.check_teacher_compatible(cfg, teacher_cfg)
    default = (lambda: quant_training.self_default_pairs(task, cfg)) if self_teacher else None
    pairs, adaptors = distill_pairs(task, cfg, teacher_cfg, extra, notes, default=default, origins=origins)
    hooks = check.distill_hooks(args, task, cfg, teacher_cfg)  # --check: before any model is built, its flags
    save_dir = args.save_dir or launch.run_folder_name(task, cfg, teacher_cfg, pairs)
    if self_teacher:  # the fp32 student is copied, then quantised (a teacher cache stores the copy's tensors)
        quant_training.check_self_start(task, cfg, args.init_weights)
        student = launch.build_student(task, quant_training.without_quant(cfg), args.init_weights, log=notes.append)
        teacher = quant_training.self_teacher(task, cfg, student, log=notes.append)
        quant_training.quantize_student(task, student, cfg, log=notes.append)
        task.prepare_pair(student, teacher, cfg, log=notes.append)
    elif getattr(args, "teacher_cache", None):  # built when an entry is missing (slim/engine/teacher_cache.py)
        student = launch.build_student(task, cfg, args.init_weights, log=notes.append)
        teacher = launch.teacher_source(task, teacher_cfg, weights, allow_untrained, notes.append, key, student,
                                        cfg, seed=args.seed)
    else:
        student = launch.build_student(task, cfg, args.init_weights, log=notes.append)
        teacher = launch.build_teacher(task, teacher_cfg, weights, allow_untrained, log=notes.append, key=key)
        task.prepare_pair(student, teacher, cfg, log=notes.append)
    launch.train(task, cfg, student, teacher, pairs, adaptors, launch.options_from_args(args, save_dir), notes,
                 hooks=hooks)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # PaddleClas configs (Arch: + Global:) run with PaddleClas's command line: slim/apps/ppcls.py
    from slim.apps import ppcls as ppcls_cli
    if ppcls_cli.wants(argv):
        return ppcls_cli.train_main(argv)
    if any(a == "--pipeline" or a.startswith("--pipeline=") for a in argv):
        from . import pipeline  # stages of training from one yaml (slim/apps/pipeline.py)
        return pipeline.main(argv)
    args = parse_args(argv)
    launch.setup_process(args)
    opts = launch.flag_overrides(args, args.student_config)
    task, cfg = launch.load_task_config(args.student_config, opts)
    notes = []
    cfg = quant_training.prepare_config(args, task, cfg, opts, log=notes.append)
    run(args, task, cfg, args.allow_untrained_teacher, notes=notes)


def cli():
    """The `slim-distill` command."""
    sys.exit(launch.run_main(main))


if __name__ == "__main__":
    cli()
