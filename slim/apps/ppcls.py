"""The commands for PaddleClas configs, as PaddleClas users type them.

    python tools/train.py -c X.yaml -o Global.epochs=1 -o Arch.models.0.Teacher.pretrained=P
    python slim/distill/distill_train.py -c X.yaml ...            (the same; also under paddle.distributed.launch)
    python tools/eval.py -c X.yaml -o Global.pretrained_model=output/DistillationModel/best_model
    python tools/export.py -c X.yaml -o Global.pretrained_model=P -o Global.save_inference_dir=D

tools/train.py, slim/distill/distill_train.py, tools/eval.py and tools/export.py hand a config with `Arch:` and
`Global:` to these functions. The engine's flags (--iters, --save_dir, --resume_model auto, --seed,
--precision, --num_workers, ...) work as for every config; a flag given on the command line wins over Global.

Global: epochs, output_dir (runs go to OUTPUT_DIR/<Arch.name>), save_interval and eval_interval (in epochs),
eval_during_train, pretrained_model (weights to start from; the weights to evaluate or export),
checkpoints (resume), use_visualdl, print_batch_step, device (gpu falls back to cpu, with a log line, when no
GPU is visible), seed, image_shape (export input). AMP (a section with use_amp not False): --precision fp16 at
AMP.level. --teacher_cache DIR stores the frozen models' outputs (slim/engine/teacher_cache.py) for later runs.
"""
import os
import sys

from slim.distill.errors import ConfigError, SlimError
from slim.quant import training as quant_training
from slim.tasks.ppcls import config as pc

CONFIG_FLAGS = ("-c", "--config", "--student_config")


def config_path(argv):
    argv = list(argv)
    for i, a in enumerate(argv):
        if a in CONFIG_FLAGS and i + 1 < len(argv):
            return argv[i + 1]
        for flag in CONFIG_FLAGS[1:]:
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
    return None


def wants(argv):
    """True when the command line's config is a PaddleClas config (these commands take it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a == "--pipeline" or a.startswith("--pipeline=") for a in argv):
        return False
    path = config_path(argv)
    if not path or not os.path.isfile(path):
        return False
    try:
        return pc.is_ppcls_config(pc.read_yaml(path))
    except SlimError:
        return False


def _explicit(argv, *flags):
    return any(a in flags or any(a.startswith(f + "=") for f in flags) for a in argv)


def set_device(cfg, flag, log):
    from slim.engine import env
    import paddle
    wanted = flag or str(pc.global_cfg(cfg).get("device") or "").lower() or None
    if wanted and wanted.startswith("gpu") and not flag:
        if not (paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
            log(f"Global.device is {wanted} but no GPU is visible (or Paddle was built without CUDA): running on cpu")
            wanted = "cpu"
    if wanted not in (None, "cpu") and not wanted.startswith("gpu"):
        raise ConfigError(f"Global.device {wanted!r} is not supported here; use gpu or cpu")
    env.set_device(wanted)


def _set(cfg, path, value):
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def train_main(argv):
    from slim.apps import launch
    from slim.engine import env
    from slim.engine.trainer import TrainOptions
    from slim.tasks.ppcls.task import Task
    argv = pc.merge_opts(sys.argv[1:] if argv is None else argv)
    p = launch.make_parser(__doc__)
    p.add_argument("--config", "-c", "--student_config", dest="config", required=True)
    p.add_argument("--teacher_config", "--teather_config", "-t", default=None, help=argparse_hidden())
    p.add_argument("--slim_config", default=None, help=argparse_hidden())
    p.add_argument("--teacher_pretrained", default=None,
                   help="weights of the frozen model(s): same as -o Arch.models.0.<Name>.pretrained=P")
    launch.add_common_flags(p)
    launch.add_teacher_cache_flags(p)
    from slim.apps import check
    check.add_check_flags(p)
    args = p.parse_args(argv)
    if args.teacher_config or args.slim_config:
        raise ConfigError(f"{args.config} is a PaddleClas config: its teacher is one of Arch.models; drop "
                          f"-t/--teacher_config/--slim_config and give the teacher's weights with "
                          f"-o Arch.models.0.Teacher.pretrained=PATH.")
    notes = []
    cfg = pc.load(args.config, args.opts, log=notes.append)
    if args.teacher:
        raise ConfigError(f"--teacher {args.teacher}: {args.config} is a PaddleClas config; its teacher is one of "
                          f"Arch.models (for QAT with the fp32 model as teacher, a DistillationModel of two copies of "
                          f"the model with the frozen one's pretrained weights).")
    cfg = quant_training.prepare_config(args, Task(), cfg, log=notes.append)  # --quant_config -> Slim.quant
    g = pc.global_cfg(cfg)
    set_device(cfg, args.device, notes.append)
    seed = args.seed if args.seed is not None else g.get("seed")
    env.seed_everything(seed)
    if args.teacher_pretrained:
        arch = cfg.get("Arch") or {}
        frozen = [i for i, f in enumerate(arch.get("freeze_params_list") or []) if f]
        if len(frozen) != 1:
            raise ConfigError("--teacher_pretrained needs exactly one frozen model in Arch.freeze_params_list; give "
                              "-o Arch.models.<i>.<Name>.pretrained=PATH instead.")
        (name, sub), = arch["models"][frozen[0]].items()
        sub["pretrained"] = args.teacher_pretrained
    if args.epochs is not None:
        cfg["Global"]["epochs"] = args.epochs
    if args.batch_size is not None:
        _set(cfg, "DataLoader.Train.sampler.batch_size", args.batch_size)
    if args.learning_rate is not None:
        lr = cfg.setdefault("Optimizer", {}).get("lr")
        if isinstance(lr, dict):
            lr["learning_rate"] = args.learning_rate
        else:
            cfg["Optimizer"]["lr"] = args.learning_rate
    unread = pc.unread_keys(cfg)
    if unread:
        notes.append(f"not used by this package: {', '.join(unread)}")
    task = Task()
    task.iters = args.iters
    if g.get("checkpoints") and args.resume_model is None:
        notes.append(f"Global.checkpoints {g['checkpoints']}: resuming from it")
    ipe = task.iters_per_epoch(cfg)  # reads the training list first: a data error stops before any model is built
    model = launch.build_student(task, cfg, args.init_weights, log=notes.append)
    with task.logging_to(notes.append):  # the optimizer and PaddleClas's schedule, checked and logged before training
        task.training_settings(cfg)
    save_dir = args.save_dir or os.path.join(str(g.get("output_dir") or "./output/"), task.run_name(cfg))

    def epochs_to_iters(value, default):
        return max(int(round(float(value if value is not None else default) * ipe)), 1)

    save_interval = args.save_interval if _explicit(argv, "--save_interval") else epochs_to_iters(
        g.get("save_interval"), 1)
    eval_interval = args.eval_interval or epochs_to_iters(g.get("eval_interval"), 1)
    log_iters = args.log_iters if _explicit(argv, "--log_iters") else int(g.get("print_batch_step") or 10)
    precision, level = launch.precision_from_args(args)
    amp = cfg.get("AMP")
    if precision is None and isinstance(amp, dict) and amp.get("use_amp", True) is not False:
        precision = "fp16"
        level = level or str(amp.get("level", "O1")).upper()
        notes.append(f"AMP: fp16 at level {level} (the trainer's --precision fp16 --amp_level {level}; its loss "
                     f"scale is dynamic)")
    options = TrainOptions(
        save_dir=save_dir, log_iters=log_iters, save_interval=save_interval,
        keep_checkpoint_max=args.keep_checkpoint_max, do_eval=bool(args.do_eval or g.get("eval_during_train")),
        eval_interval=eval_interval, use_vdl=bool(args.use_vdl or g.get("use_visualdl")),
        num_workers=args.num_workers, seed=seed, resume_model=args.resume_model or g.get("checkpoints"),
        overwrite=getattr(args, "overwrite", False), analyse=getattr(args, "analyse", False),
        precision=precision or "fp32", amp_level=level or "O1", data_seed=getattr(args, "data_seed", None),
        teacher_cache=args.teacher_cache, teacher_cache_dtype=args.teacher_cache_dtype,
        teacher_cache_topk=args.teacher_cache_topk, teacher_cache_rebuild=args.teacher_cache_rebuild,
        teacher_cache_repair=args.teacher_cache_repair)
    notes.append(f"{ipe} iterations per epoch; checkpoints every {save_interval}, evaluation every {eval_interval} "
                 f"iterations" + ("" if options.do_eval else " (evaluation off: Global.eval_during_train is not True)"))
    launch.train(task, cfg, model, options=options, notes=notes, hooks=check.ppcls_hooks(args, task, cfg))
    return 0


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def _model_for_tools(args, log=print):
    from slim.tasks.ppcls.task import Task
    cfg = pc.load(args.config, args.opts, log=log)
    set_device(cfg, args.device, log)
    task = Task()
    task.mode = "eval"
    path = args.model_path or pc.global_cfg(cfg).get("pretrained_model")
    if not path:
        raise ConfigError("No weights given: pass -o Global.pretrained_model=output/<Arch.name>/best_model (with or "
                          "without .pdparams).")
    if args.model_path:
        cfg["Global"]["pretrained_model"] = args.model_path
    cfg = quant_training.apply_quant_config(getattr(args, "quant_config", None), task, cfg, log=log)
    with task.logging_to(log):
        model = task.build_model(cfg)
        # a QAT checkpoint (Slim.quant or --quant_config) loads into the quantised model
        quant_training.prepare_for_weights(task, model, cfg, path, "Global.pretrained_model", log=log)
        task.load_weights(model, path, "Global.pretrained_model")
    model.eval()
    return task, cfg, model


def _tool_parser(doc):
    from slim.apps import launch
    p = launch.make_parser(doc)
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--model_path", default=None, help="weights (same as -o Global.pretrained_model=P)")
    p.add_argument("--device", default=None, help="cpu or gpu (default: Global.device, cpu when no GPU)")
    quant_training.add_quant_flags(p, teacher=False)
    p.add_argument("-o", "--opts", nargs="+", default=[], metavar="KEY=VALUE")
    launch.add_integrity_flags(p)
    return p


def eval_main(argv):
    from slim.apps import tools
    argv = pc.merge_opts(sys.argv[1:] if argv is None else argv)
    p = _tool_parser(__doc__)
    p.add_argument("--save_json", default=None, help="also write the metrics to this json file")
    p.add_argument("--save_dir", default=None, help=argparse_hidden())
    args = p.parse_args(argv)
    task, cfg, model = _model_for_tools(args)
    tools.evaluate_on_val(task, cfg, model, args.save_json)
    return 0


def export_main(argv):
    """PaddleClas's export: SAVE_DIR/inference.* (fp32, or int8 for a QAT checkpoint: slim/apps/export.py) and
    inference.yml."""
    import yaml

    from slim.apps.export import export_model
    argv = pc.merge_opts(sys.argv[1:] if argv is None else argv)
    p = _tool_parser(__doc__)
    p.add_argument("--save_dir", default=None, help="default: Global.save_inference_dir (./inference)")
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args(argv)
    task, cfg, model = _model_for_tools(args)
    g = pc.global_cfg(cfg)
    save_dir = args.save_dir or str(g.get("save_inference_dir") or "./inference")
    os.makedirs(save_dir, exist_ok=True)
    shape = [1] + [int(v) for v in (g.get("image_shape") or [3, 224, 224])]
    prefix, precision = export_model(task, cfg, model, save_dir, check_shape=shape, atol=args.atol, name="inference")
    infer = (cfg.get("Infer") or {}).get("transforms")
    with open(os.path.join(save_dir, "inference.yml"), "w") as f:
        yaml.safe_dump({"Global": {"model_name": task.run_name(cfg), "image_shape": g.get("image_shape"),
                                   "precision": precision},
                        "PreProcess": {"transform_ops": infer}}, f, sort_keys=False)
    name = getattr(model, "infer_model_name", None)
    print(f"exported {name + ' of ' if name else ''}{task.run_name(cfg)} ({precision}) to {prefix}.*")
    return 0
