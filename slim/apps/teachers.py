"""Several teachers for one student: repeated `-t` (named t1, t2, ...), a `teachers:` list in the student
config, or PaddleDetection's repeated `--slim_config` (named s1, s2, ...: each distillation config's teacher,
weights and method, its pairs comparing with its own teacher). Each teacher has its own weights, precision
and, with --teacher_cache, its own cache folder.

    python slim/distill/distill_train.py -c S.yml -t T1.yml -t T2.yml \
        --teacher_pretrained t1.pdparams --teacher_pretrained t2.pdparams
    python tools/train.py -c S.yml --slim_config cwd_r50.yml --slim_config fgd_r101.yml

    teachers:                                   # in the student config (instead of -t)
      - {name: r50, config: configs/seg/r50.yml, weights: output/r50/best_model/model.pdparams}
      - {name: r18, config: configs/seg/r18.yml, weights: output/r18/best_model/model.pdparams, precision: fp16}
    distill_loss: {types: [{type: KLLoss}], coef: [3], ensemble: mean_prob}    # the teachers' mean probability
    distill:
      - {student: backbone.bb_2_1, teacher: r50.backbone.bb_2_5, loss: MSELoss, align: 1x1conv}  # one teacher

A pair compares one teacher's tensors (`teacher: <name>.LAYER` or `teacher_name: <name>`) or all of them
(`ensemble: mean_prob | mean_logit | per_teacher`, slim/distill/ensemble.py).
"""
import argparse
import os
from collections import OrderedDict

from slim.distill.errors import ConfigError
from slim.engine.amp import PRECISIONS
from slim.quant.training import is_qat_slim_config
from . import launch

TEACHER_KEYS = {"name", "config", "weights", "precision"}


class AppendKeepFirst(argparse.Action):
    """A repeatable flag: every value in `<dest>_all`, the first in `<dest>` (what one-teacher code reads)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = list(getattr(namespace, self.dest + "_all", None) or []) + [values]
        setattr(namespace, self.dest + "_all", seen)
        setattr(namespace, self.dest, seen[0])


def wanted(args, cfg):
    """[{name, config, weights, precision}] when the run has named or several teachers, else None (one -t)."""
    listed = cfg.get("teachers")
    slims = [p for p in getattr(args, "slim_config_all", None) or [] if not is_qat_slim_config(p)]
    if len(slims) > 1:
        if listed is not None or getattr(args, "teacher_config", None):
            raise ConfigError("Several --slim_config files each name a teacher; drop -t/--teacher_config and "
                              "`teachers:`.")
        return [{"name": f"s{i + 1}", "slim_config": p, "weights": None, "precision": None}
                for i, p in enumerate(slims)]
    configs = list(getattr(args, "teacher_config_all", None) or [])
    weights = list(getattr(args, "teacher_pretrained_all", None) or [])
    if listed is not None:
        if configs or weights:
            raise ConfigError("The student config lists `teachers:`; drop -t/--teacher_config and "
                              "--teacher_pretrained (give each teacher's config and weights in the list).")
        return _from_list(listed, cfg)
    if len(configs) <= 1:
        if len(weights) > 1:
            raise ConfigError(f"--teacher_pretrained was given {len(weights)} times for {len(configs)} teacher "
                              f"config(s); give one per -t, in the same order.")
        return None
    if weights and len(weights) != len(configs):
        raise ConfigError(f"{len(configs)} teachers (-t) but {len(weights)} --teacher_pretrained: give one weights "
                          f"file per teacher, in the same order, or none (each config's own model.pretrained).")
    return [{"name": f"t{i + 1}", "config": c, "weights": weights[i] if weights else None, "precision": None}
            for i, c in enumerate(configs)]


def _from_list(listed, cfg):
    if not isinstance(listed, list) or not listed:
        raise ConfigError(f"`teachers:` must be a non-empty list of {{name, config, weights}}, got {listed!r}")
    out, names = [], set()
    for i, entry in enumerate(listed):
        where = f"teachers #{i}"
        if not isinstance(entry, dict) or "config" not in entry:
            raise ConfigError(f"{where} must be a mapping with `config` (and name, weights, precision), got {entry!r}")
        unknown = set(entry) - TEACHER_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(TEACHER_KEYS))}")
        name = str(entry.get("name") or f"t{i + 1}")
        if name in names or "/" in name or "." in name:
            raise ConfigError(f"{where}: name {name!r} must be unique and hold no '.' or '/' (pairs write "
                              f"`teacher: {name}.LAYER`)")
        names.add(name)
        precision = entry.get("precision")
        if precision is not None and str(precision).lower() not in PRECISIONS:
            raise ConfigError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        out.append({"name": name, "config": str(entry["config"]), "weights": entry.get("weights"),
                    "precision": str(precision).lower() if precision else None})
    return out


def build(args, task, cfg, specs, student, allow_untrained, notes):
    """(OrderedDict name -> teacher (a frozen model, or a TeacherSource with --teacher_cache), teacher configs,
    pairs of slim configs (routed to their teacher)); slim configs are read before (read_slim_configs)."""
    from slim.engine.teacher import TeacherSource
    if len(specs) > 1 and task.pair_needs_teacher(cfg):
        raise ConfigError("head_from_teacher / embedding_projection prepare the student from one teacher; with "
                          "several teachers, drop them or train with one teacher.")
    teachers, configs, extra = OrderedDict(), OrderedDict(), []
    cached = bool(getattr(args, "teacher_cache", None))
    for spec in specs:
        key = f"teachers.{spec['name']}.weights" if spec["weights"] else None
        if spec.get("slim_config"):  # PaddleDetection's form: teacher, weights and pairs of one slim config
            teacher_cfg, spec["weights"], pairs = spec["slim"]  # read by read_slim_configs
            spec["config"], key = spec["slim_config"], f"pretrain_weights (of --slim_config {spec['slim_config']})"
            # its pairs compare with its own teacher; names prefixed, as two slim configs may name terms alike
            extra += [dict(p, teacher_name=spec["name"], name=f"{spec['name']}_{p.get('name') or i}")
                      for i, p in enumerate(pairs)]
        else:
            teacher_task, teacher_cfg = launch.load_task_config(spec["config"])
            if teacher_task.name != task.name:
                raise ConfigError(f"Teacher {spec['name']} ({spec['config']}) is a {teacher_task.name} model but the "
                                  f"student config is {task.name}: every teacher must be of the student's task.")
        teacher_cfg = task.prepare_teacher_config(cfg, teacher_cfg)
        task.check_teacher_compatible(cfg, teacher_cfg)
        log = _prefixed(notes, spec["name"])
        if cached:
            teacher = launch.teacher_source(task, teacher_cfg, spec["weights"], allow_untrained, log, key, student,
                                            cfg, seed=args.seed)
        else:
            teacher = launch.build_teacher(task, teacher_cfg, spec["weights"], allow_untrained, log=log, key=key)
            task.prepare_pair(student, teacher, cfg, log=log)
        if not isinstance(teacher, TeacherSource):
            teacher = TeacherSource(None, {}, model=teacher)
        teacher.precision = spec["precision"]
        teachers[spec["name"]], configs[spec["name"]] = teacher, teacher_cfg
    notes.append(f"{len(teachers)} teachers: " + ", ".join(
        f"{n} ({os.path.basename(s['config'])}" + (f", {s['precision']}" if s["precision"] else "") + ")"
        for n, s in zip(teachers, specs)))
    return teachers, configs, extra


def _prefixed(notes, name):
    return lambda line: notes.append(f"teacher {name}: {line}")


def run(args, task, cfg, specs, allow_untrained, notes):
    """distill_train.py with several (or named) teachers."""
    from .distill import distill_pairs
    if getattr(args, "slim_config", None) and not any(spec.get("slim_config") for spec in specs):
        raise ConfigError("--slim_config names one teacher (PaddleDetection's form); with -t or `teachers:` give "
                          "the pairs in the student config, or give every teacher as a --slim_config.")
    cfg = read_slim_configs(task, cfg, specs, notes)  # they may change the student config
    student = launch.build_student(task, cfg, args.init_weights, log=notes.append)
    teachers, configs, extra = build(args, task, cfg, specs, student, allow_untrained, notes)
    first = next(iter(configs.values()))
    pairs, adaptors = distill_pairs(task, cfg, first, extra, notes)
    save_dir = args.save_dir or launch.run_folder_name(task, cfg, list(configs.values()), pairs)
    launch.train(task, cfg, student, teachers, pairs, adaptors, launch.options_from_args(args, save_dir), notes)


def read_slim_configs(task, cfg, specs, notes):
    """Read each teacher's slim config once, in order (each may change the student config): its teacher config,
    weights and pairs go in `spec["slim"]`; returns the student config after all of them."""
    from .distill import teacher_from_slim_config
    for spec in specs:
        if spec.get("slim_config"):
            cfg, teacher_cfg, weights, pairs = teacher_from_slim_config(task, cfg, spec["slim_config"], notes)
            spec["slim"] = (teacher_cfg, weights, pairs)
    return cfg
