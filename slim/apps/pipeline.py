"""Pipelines of training stages, one yaml, one command (MixFormerV2-style: distil, remove, cut, fine-tune, head).

    python slim/distill/distill_train.py --pipeline configs/depth/multistage_flow.yml --seed 0
    python -m paddle.distributed.launch --nproc_per_node 2 slim/distill/distill_train.py --pipeline P.yml ...

    save_dir: output/depth/flow              # default of --save_dir
    defaults: {save_interval: 100}           # run settings of every stage (a stage may set its own)
    stages:
      - name: distil                         # writes SAVE_DIR/1_distil/ (iter_N/, best_model/, record.txt)
        teacher: {config: T.yml, weights: output/large/iter_600/model.pdparams}
        student: configs/depth/segformer_mscan_d14_nuclei.yml
        iters: 600
      - name: remove                         # MixFormerV2's stage 2: blocks fade into identities
        teacher: previous                    # the student of the stage before, with its final weights
        student: configs/depth/segformer_mscan_d14_nuclei.yml
        init: teacher                        # previous | teacher | {stage: NAME} | a .pdparams path
        iters: 100
        remove_layers:                       # or `remove_layers: [1, 3]` with `block_list: NAME`
          {backbone.block1: [1], backbone.block2: [1], backbone.block3: [1, 3, 5, 7], backbone.block4: [1]}
        remove_iters: 80                     # cosine 1 -> 0 over the first 80 iterations
        distill_layers_blocks: backbone.block3
        distill_layers_student: [1, 3, 5, 7] # outputs of these blocks ...
        distill_layers_teacher: [1, 3, 5, 7] # ... against these teacher blocks (L2; distill_layers_loss)
        cut: true                            # default with remove_layers: drop and renumber the blocks
      - name: finetune
        teacher: {stage: distil}
        student: configs/depth/segformer_mscan_d7_nuclei.yml   # the same model with fewer blocks
        init: previous                       # the cut weights, checked to load strictly
        distill_layers: previous             # the layer pairs above, renumbered through the cut
        iters: 200
      - name: head
        student: configs/depth/segformer_mscan_d7_nuclei.yml
        init: previous
        trainable: [linear_pred]             # everything else frozen (BN statistics included)
        iters: 50

Other stage keys: `opts` (student config overrides, like -o), `distill` (pairs) and `distill_loss`
(replacing the student config's), `distill_layers_teacher_blocks` (the teacher's block list, default
`distill_layers_blocks`, itself defaulting to `block_list`), `distill_layers_loss` ({type: L2Loss}),
`distill_layers_weight`, `distill_layers_align`, `freeze`, `handoff` (last | best: which weights the next
stage gets; removal stages always hand off their last ones), `teacher_cache` (a folder, or {dir, dtype,
topk, rebuild, repair}: the teacher's outputs stored and reused, slim/engine/teacher_cache.py), and the run
settings `seed`, `data_seed`, `save_interval`, `log_iters`, `do_eval`, `eval_interval`, `keep_checkpoint_max`, `num_workers`, `use_vdl`,
`amp` (mixed precision: `amp: {precision: fp16, level: O1}`, precision fp32, fp16 or bf16, level O1 or O2;
see slim/engine/amp.py; --precision / --amp_level / --amp on the command line).
Priority: command-line flags > the stage > `defaults`. Config paths are read from the working directory,
else next to the pipeline yaml.

Stages run in order; each hands its weights to the next through SAVE_DIR/pipeline_state.json. Running the
same command again continues where it stopped: finished stages are skipped, an interrupted stage resumes
from its last checkpoint.
"""
import json
import os
import re
import shutil

from slim.depth import (FrozenLayersEvalHook, ProgressiveRemoval, RemovalScheduleHook, apply_freeze,
                        block_counts, check_removal, compare_outputs, cut_state_dict, layer_pairs,
                        parse_removal, renumber_index)
from slim.depth.removal import check_layer_indices
from slim.distill.adaptor import unwrap
from slim.distill.config import apply_overrides, parse_yaml_with_bases
from slim.distill.errors import ConfigError, SlimError
from slim.distill.pairs import check_keys, logit_pairs, parse_pairs
from slim.engine import env
from slim.engine.amp import precision_settings
from slim.engine.checkpoint import (MODEL_FILE, find_latest_checkpoint, iter_checkpoints, load_model_weights,
                                    save_checkpoint)
from slim.engine.hooks import Hook
from slim.engine.trainer import TrainOptions
from . import launch

STATE_FILE = "pipeline_state.json"
RUN_KEYS = ("seed", "save_interval", "log_iters", "do_eval", "eval_interval", "keep_checkpoint_max",
            "num_workers", "use_vdl", "amp", "data_seed")
STAGE_KEYS = {
    "name", "student", "teacher", "init", "iters", "epochs", "opts", "distill", "distill_loss",
    "remove_layers", "block_list", "remove_iters", "cut", "distill_layers", "distill_layers_student",
    "distill_layers_teacher", "distill_layers_blocks", "distill_layers_teacher_blocks", "distill_layers_loss",
    "distill_layers_weight", "distill_layers_align", "freeze", "trainable", "handoff", "teacher_cache", *RUN_KEYS,
}
CACHE_KEYS = {"dir", "dtype", "topk", "rebuild", "repair"}
RUN_DEFAULTS = {"seed": None, "save_interval": 1000, "log_iters": 10, "do_eval": False, "eval_interval": None,
                "keep_checkpoint_max": 5, "num_workers": 0, "use_vdl": False, "amp": None, "data_seed": None}


def handed_weights(record):
    """The weights a finished stage's record (pipeline_state.json) hands on: its cut weights, if cut."""
    return (record["cut"] or record)["weights"]


def _is_stage_ref(value):
    return isinstance(value, dict) and set(value) == {"stage"}


class Stage:
    """One validated entry of `stages:`."""

    def __init__(self, index, raw, defaults, find_file, earlier):
        where = f"stage {index + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must be a mapping with at least `name` and `student`, got {raw!r}")
        check_keys(raw, STAGE_KEYS, f"{where} ({raw.get('name', '?')})")
        self.index, self.raw = index, raw
        self.name = str(raw.get("name") or "")
        if not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ConfigError(f"{where} needs a `name` of letters, digits, '_', '-' or '.', got {raw.get('name')!r}")
        self.where = where = f"stage {index + 1} ({self.name})"
        if self.name in earlier:
            raise ConfigError(f"{where}: another stage is already called {self.name!r}; stage names are unique.")
        self.earlier = list(earlier)

        self.run = {k: raw.get(k, defaults.get(k, RUN_DEFAULTS[k])) for k in RUN_KEYS}
        self.run["amp"] = precision_settings(self.run["amp"], f"{where}: amp")  # (precision, level) or None
        for ref_key in ("teacher", "init", "distill_layers", "student"):
            self._check_refs(ref_key, raw.get(ref_key))
        if "student" not in raw:
            raise ConfigError(f"{where} has no `student` (the student's config yaml).")
        self.student = raw["student"] if raw["student"] == "previous" else find_file(raw["student"], f"{where}: student")
        self.teacher = self._teacher(raw.get("teacher"), find_file)
        self.teacher_cache = self._teacher_cache(raw.get("teacher_cache"))
        self.init = raw.get("init")
        if self.init == "teacher" and self.teacher is None:
            raise ConfigError(f"{where}: `init: teacher` but the stage has no teacher.")
        if isinstance(self.init, str) and self.init not in ("previous", "teacher"):
            self.init = find_file(self.init, f"{where}: init", weights=True)
        if self.init is not None and not isinstance(self.init, str) and not _is_stage_ref(self.init):
            raise ConfigError(f"{where}: `init` must be previous, teacher, {{stage: NAME}} or a weights path, "
                              f"got {self.init!r}")

        self.opts = [str(o) for o in (raw.get("opts") or [])]
        if raw.get("iters") is not None:
            self.opts += [f"iters={int(raw['iters'])}", "epochs=null"]
        if raw.get("epochs") is not None:
            self.opts += [f"epochs={int(raw['epochs'])}", "iters=null"]

        self.removal = parse_removal(raw.get("remove_layers"), raw.get("block_list") if not isinstance(
            raw.get("remove_layers"), dict) else None, f"{where}: remove_layers")
        if not self.removal and any(k in raw for k in ("remove_iters", "cut")):
            raise ConfigError(f"{where}: remove_iters / cut need `remove_layers`.")
        self.remove_iters = raw.get("remove_iters", raw.get("iters"))
        self.remove_iters = None if self.remove_iters is None else int(self.remove_iters)
        if self.removal and self.remove_iters is None:
            raise ConfigError(f"{where}: set `remove_iters` (iterations over which the blocks fade out) or `iters`.")
        if self.removal and raw.get("iters") is not None and self.remove_iters > int(raw["iters"]):
            raise ConfigError(f"{where}: remove_iters ({self.remove_iters}) exceeds the stage's iters "
                              f"({raw['iters']}): the removed blocks would not be identities at the end.")
        self.cut = bool(raw.get("cut", bool(self.removal)))
        self.handoff = raw.get("handoff", "last")
        if self.handoff not in ("last", "best"):
            raise ConfigError(f"{where}: handoff must be 'last' or 'best', got {self.handoff!r}")
        if self.handoff == "best" and self.removal:
            raise ConfigError(f"{where}: a removal stage hands off its last weights (only then are the removed "
                              f"blocks identities); drop `handoff: best`.")
        if self.handoff == "best" and not self.run["do_eval"]:
            raise ConfigError(f"{where}: `handoff: best` needs `do_eval: true` (best_model/ is kept by evaluation).")

        self.layer_blocks = raw.get("distill_layers_blocks", raw.get("block_list"))
        self.layer_teacher_blocks = raw.get("distill_layers_teacher_blocks", self.layer_blocks)
        self.layers_inherit = raw.get("distill_layers") == "previous"
        if raw.get("distill_layers") not in (None, "previous"):
            raise ConfigError(f"{where}: `distill_layers` can only be `previous` (inherit the previous stage's "
                              f"layer pairs, renumbered through its cut); give explicit pairs with "
                              f"distill_layers_student / distill_layers_teacher.")
        self.layer_student = list(raw.get("distill_layers_student") or [])
        self.layer_teacher = list(raw.get("distill_layers_teacher") or [])
        if self.layers_inherit and (self.layer_student or self.layer_teacher):
            raise ConfigError(f"{where}: `distill_layers: previous` and explicit distill_layers_student/teacher "
                              f"exclude each other.")
        if len(self.layer_student) != len(self.layer_teacher):
            raise ConfigError(f"{where}: distill_layers_student has {len(self.layer_student)} indices and "
                              f"distill_layers_teacher {len(self.layer_teacher)}; pair them one to one.")
        if self.layer_student and not self.layer_blocks:
            raise ConfigError(f"{where}: distill_layers_student needs the block list the indices refer to: set "
                              f"`block_list` or `distill_layers_blocks`.")
        if (self.layer_student or self.layers_inherit) and self.teacher is None:
            raise ConfigError(f"{where}: layer pairs need a teacher; set `teacher:`.")
        self.freeze, self.trainable = raw.get("freeze"), raw.get("trainable")

    def _check_refs(self, key, value):
        refs = []
        if value == "previous":
            refs.append("previous")
        elif _is_stage_ref(value):
            refs.append(value)
        elif isinstance(value, dict):
            refs += [v for v in (value.get("weights"),) if v == "previous" or _is_stage_ref(v)]
        for ref in refs:
            if ref == "previous" and not self.earlier:
                raise ConfigError(f"{self.where}: `{key}` refers to `previous`, but this is the first stage: "
                                  f"there is no stage before it. Give a config and weights instead.")
            if _is_stage_ref(ref) and ref["stage"] not in self.earlier:
                raise ConfigError(f"{self.where}: `{key}` refers to stage {ref['stage']!r}, which does not run "
                                  f"before it (earlier stages: {', '.join(self.earlier) or 'none'}).")

    def _teacher_cache(self, value):
        """`teacher_cache: DIR` or {dir: DIR, dtype: float16, topk: K, rebuild: false, repair: false} -> a dict,
        or None."""
        if value is None:
            return None
        if isinstance(value, str):
            value = {"dir": value}
        if not isinstance(value, dict) or not value.get("dir"):
            raise ConfigError(f"{self.where}: `teacher_cache` must be a folder or a mapping with `dir` (and optionally "
                              f"dtype, topk, rebuild, repair), got {value!r}")
        check_keys(value, CACHE_KEYS, f"{self.where}: teacher_cache")
        if self.teacher is None:
            raise ConfigError(f"{self.where}: `teacher_cache` needs a teacher; set `teacher:` or drop it.")
        return {"dir": str(value["dir"]), "dtype": str(value.get("dtype", "float16")), "topk": value.get("topk"),
                "rebuild": bool(value.get("rebuild", False)), "repair": bool(value.get("repair", False))}

    def _teacher(self, value, find_file):
        if value is None:
            return None
        if value == "previous" or _is_stage_ref(value):
            return {"config": None, "weights": value}
        if isinstance(value, str):
            return {"config": find_file(value, f"{self.where}: teacher"), "weights": None}
        if isinstance(value, dict) and "config" in value:
            check_keys(value, {"config", "weights", "opts"}, f"{self.where}: teacher")
            weights = value.get("weights")
            if isinstance(weights, str) and weights != "previous":
                weights = find_file(weights, f"{self.where}: teacher weights", weights=True)
            return {"config": find_file(value["config"], f"{self.where}: teacher config"), "weights": weights,
                    "opts": [str(o) for o in value.get("opts") or []]}
        raise ConfigError(f"{self.where}: `teacher` must be previous, {{stage: NAME}}, a config path or "
                          f"{{config: T.yml, weights: W}}, got {value!r}")

    def source(self, ref):
        """'previous' or {stage: NAME} -> the name of that stage."""
        return self.earlier[-1] if ref == "previous" else ref["stage"]

    def folder(self, save_dir):
        return os.path.join(save_dir, f"{self.index + 1}_{self.name}")


def load_pipeline(path, opts=()):
    """Read and validate a pipeline yaml -> (raw dict, [Stage])."""
    raw = parse_yaml_with_bases(path)
    raw = apply_overrides(raw, list(opts or []))
    check_keys(raw, {"stages", "defaults", "save_dir"}, f"pipeline {path}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"pipeline {path} needs a non-empty `stages:` list.")
    defaults = raw.get("defaults") or {}
    check_keys(defaults, set(RUN_KEYS), f"pipeline {path}: defaults")
    base_dir = os.path.dirname(os.path.abspath(path))

    def find_file(value, where, weights=False):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a file path, got {value!r}")
        for candidate in (value, os.path.join(base_dir, value)):
            if os.path.exists(candidate):
                return os.path.abspath(candidate)
        if weights:  # weights may be produced later by the user; checked when the stage starts
            return os.path.abspath(value)
        raise ConfigError(f"{where}: file {value!r} not found (looked in the working directory and next to {path}).")

    stages = []
    for i, entry in enumerate(stages_raw):
        stages.append(Stage(i, entry, defaults, find_file, [s.name for s in stages]))
    return raw, stages


class _ScheduleGuard(Hook):
    """Refuses a removal schedule longer than the stage (the blocks would not end as identities)."""

    def __init__(self, removal, where):
        self.removal, self.where = removal, where

    def before_train(self, trainer):
        if self.removal.remove_iters > trainer.max_iters:
            raise ConfigError(f"{self.where}: remove_iters ({self.removal.remove_iters}) exceeds the stage's "
                              f"{trainer.max_iters} iterations: the removed blocks would not be identities at "
                              f"the end. Lower remove_iters or raise iters.")


class Pipeline:
    """Runs the stages in order, each in SAVE_DIR/<n>_<name>/, recording hand-offs in pipeline_state.json."""

    def __init__(self, path, stages, save_dir, flags, log=print):
        self.path, self.stages, self.save_dir = os.path.abspath(path), stages, save_dir
        self.flags = flags  # command-line run settings (None = not given)
        self.by_name = {s.name: s for s in stages}
        self._print = log
        self.state = {"pipeline": self.path, "seed": flags.get("seed"), "stages": {}, "done": {}}

    def log(self, message):
        """Pipeline-level lines: printed and appended to SAVE_DIR/pipeline.log (main process only)."""
        if not env.is_main_process():
            return
        self._print(message, flush=True) if self._print is print else self._print(message)
        os.makedirs(self.save_dir, exist_ok=True)
        with open(os.path.join(self.save_dir, "pipeline.log"), "a") as f:
            f.write(message + "\n")

    # ----- state --------------------------------------------------------------------------------------
    def _state_path(self):
        return os.path.join(self.save_dir, STATE_FILE)

    def _load_state(self):
        path = self._state_path()
        if os.path.isfile(path):
            with open(path) as f:
                old = json.load(f)
            for name, record in old.get("done", {}).items():
                stage = self.by_name.get(name)
                if stage is None or old["stages"].get(name) != _jsonable(stage.raw):
                    raise ConfigError(
                        f"{self.save_dir} holds a pipeline whose finished stage {name!r} was defined otherwise "
                        f"than in {self.path}. Use another --save_dir, or delete {self.save_dir} (or the stage's "
                        f"folder and its entry in {STATE_FILE}) to run it again.")
            if old.get("done") and old.get("seed") != self.state["seed"]:
                raise ConfigError(f"{self.save_dir} holds a pipeline run with --seed {old.get('seed')}, not "
                                  f"{self.state['seed']}: continue it with the same seed, or use another --save_dir.")
            self.state["done"] = old.get("done", {})
        elif os.path.isdir(self.save_dir) and os.listdir(self.save_dir):
            strays = [n for n in os.listdir(self.save_dir) if os.path.isdir(os.path.join(self.save_dir, n))]
            if any(iter_checkpoints(os.path.join(self.save_dir, n)) for n in strays):
                raise ConfigError(f"--save_dir {self.save_dir} holds checkpoints but no {STATE_FILE}: it is not "
                                  f"a pipeline's folder. Choose another --save_dir.")
        self.state["stages"] = {s.name: _jsonable(s.raw) for s in self.stages}

    def _save_state(self):
        if env.is_main_process():
            os.makedirs(self.save_dir, exist_ok=True)
            tmp = self._state_path() + ".tmp"
            with open(tmp, "w") as f:
                json.dump(self.state, f, indent=1)
            os.replace(tmp, self._state_path())
        env.barrier()

    # ----- settings -----------------------------------------------------------------------------------
    def _run_setting(self, stage, key):
        flag = self.flags.get(key)
        if key == "amp" and flag is not None:  # flags given override the stage's precision and/or level
            precision, level = stage.run["amp"] or ("fp32", "O1")
            return flag["precision"] or precision, flag["level"] or level
        return stage.run[key] if flag is None else flag

    def _options(self, stage, folder):
        run = {k: self._run_setting(stage, k) for k in RUN_KEYS}
        # the newest complete checkpoint of the stage; one left half-written by a killed save is skipped
        resume, _ = find_latest_checkpoint(folder, log=self.log)
        precision, level = run["amp"] or ("fp32", "O1")
        return TrainOptions(save_dir=folder, log_iters=run["log_iters"], save_interval=run["save_interval"],
                            keep_checkpoint_max=run["keep_checkpoint_max"], do_eval=bool(run["do_eval"]),
                            eval_interval=run["eval_interval"], use_vdl=bool(run["use_vdl"]),
                            num_workers=run["num_workers"], seed=run["seed"], resume_model=resume,
                            precision=precision, amp_level=level, data_seed=run["data_seed"],
                            **_cache_options(stage.teacher_cache))

    # ----- references ---------------------------------------------------------------------------------
    def _record(self, stage, ref, key):
        name = stage.source(ref)
        record = self.state["done"].get(name)
        if record is None:
            raise ConfigError(f"{stage.where}: `{key}` needs stage {name!r}, which has not finished.")
        return name, record

    def _output_of(self, stage, ref, key, config_given):
        """Weights handed on by an earlier stage, and the config that builds them."""
        name, record = self._record(stage, ref, key)
        if record.get("cut"):
            if not config_given:
                raise ConfigError(f"{stage.where}: `{key}` uses stage {name!r}, whose blocks were cut, so the "
                                  f"model to load them into is the smaller one: give its config (e.g. "
                                  f"teacher: {{config: SMALL.yml, weights: previous}}).")
            return record["cut"]["weights"], None, record
        return record["weights"], record["config"], record

    def _check_not_uncut(self, stage, record, name):
        removal = record.get("removed_uncut")
        if removal and (dict(parse_removal(removal)) != dict(stage.removal) or stage.remove_iters != 0):
            raise ConfigError(f"{stage.where} starts from stage {name!r}, whose blocks {removal} were removed but "
                              f"not cut. Set `cut: true` there (and give this stage the smaller config), or "
                              f"repeat the same remove_layers here with remove_iters: 0.")

    def _teacher(self, stage):
        spec = stage.teacher
        if spec is None:
            return None
        weights, config = spec["weights"], spec["config"]
        if weights == "previous" or _is_stage_ref(weights):
            out, out_config, _ = self._output_of(stage, weights, "teacher", config is not None)
            weights, config = out, config or out_config
        return {"config": config, "weights": weights, "opts": spec.get("opts", [])}

    def _init_weights(self, stage, teacher):
        init = stage.init
        if init is None:
            return None
        if init == "teacher":
            return teacher["weights"]
        if init == "previous" or _is_stage_ref(init):
            weights, _, record = self._output_of(stage, init, "init", True)
            self._check_not_uncut(stage, record, stage.source(init))
            return weights
        return init

    def _student_config(self, stage):
        if stage.student != "previous":
            return stage.student
        _, record = self._record(stage, "previous", "student")
        if record.get("cut"):
            raise ConfigError(f"{stage.where}: `student: previous` after the cut of stage {record['name']!r}: give "
                              f"the smaller model's config.")
        return record["config"]

    def _layer_pairs(self, stage):
        """(student blocks, student indices, teacher blocks, teacher indices) for this stage, or None."""
        if stage.layers_inherit:
            name, record = self._record(stage, "previous", "distill_layers")
            inherited = record.get("layers")
            if not inherited:
                raise ConfigError(f"{stage.where}: `distill_layers: previous`, but stage {name!r} had no layer pairs.")
            s_blocks, s_idx = inherited["student_blocks"], list(inherited["student"])
            cut = record.get("cut")
            if cut and s_blocks in cut["removal"]:
                removed, count = cut["removal"][s_blocks], cut["counts"][s_blocks]
                s_idx = [renumber_index(i, removed, count, s_blocks) for i in s_idx]
            return s_blocks, s_idx, inherited["teacher_blocks"], list(inherited["teacher"])
        if stage.layer_student:
            return stage.layer_blocks, stage.layer_student, stage.layer_teacher_blocks, stage.layer_teacher
        return None

    # ----- one stage ----------------------------------------------------------------------------------
    def run_stage(self, stage):
        folder = stage.folder(self.save_dir)
        if env.is_main_process() and os.path.isdir(folder) and not iter_checkpoints(folder):
            shutil.rmtree(folder)  # stopped before its first checkpoint: start the stage afresh
        env.barrier()
        options = self._options(stage, folder)
        self.log(f"== {stage.where}" + (f": resuming from {options.resume_model}" if options.resume_model else "")
                 + f" -> {folder}")
        env.seed_everything(options.seed)
        config = self._student_config(stage)
        task, cfg = launch.load_task_config(config, stage.opts)
        teacher_spec = self._teacher(stage)
        notes = [f"pipeline {self.path}, {stage.where}"]
        init = self._init_weights(stage, teacher_spec)
        student = launch.build_student(task, cfg, init, log=notes.append)
        hooks, removal = [], None
        if stage.removal:
            removal = ProgressiveRemoval(student, stage.removal, stage.remove_iters)
            removal.check_shapes(*task.example_inputs(cfg))
            hooks += [_ScheduleGuard(removal, stage.where), RemovalScheduleHook(removal)]

        teacher, pairs, layers = None, [], None
        if teacher_spec is not None:
            t_task, t_cfg = launch.load_task_config(teacher_spec["config"], teacher_spec["opts"])
            if t_task.name != task.name:
                raise ConfigError(f"{stage.where}: the teacher is a {t_task.name} model and the student {task.name}.")
            task.check_teacher_compatible(cfg, t_cfg)
            teacher = launch.build_teacher(t_task, t_cfg, teacher_spec["weights"], self.flags.get("allow_untrained_teacher"),
                                           log=notes.append)
            layers = self._layer_pairs(stage)
            pairs = self._pairs(stage, task, cfg, student, teacher, layers)
            task.prepare_pair(student, teacher, cfg, log=notes.append)
        if stage.freeze or stage.trainable:
            apply_freeze(student, stage.freeze, stage.trainable, log=notes.append)
            hooks.append(FrozenLayersEvalHook(student))

        trainer = launch.train(task, cfg, student, teacher, pairs, (None, None), options, notes, hooks=hooks)
        return self._hand_off(stage, task, cfg, config, trainer, removal, layers)

    def _pairs(self, stage, task, cfg, student, teacher, layers):
        distill_loss = stage.raw["distill_loss"] if "distill_loss" in stage.raw else cfg.get("distill_loss")
        pairs = logit_pairs(distill_loss, task.logits_ref(cfg))
        pairs += parse_pairs(stage.raw["distill"] if "distill" in stage.raw else cfg.get("distill") or [])
        if layers:
            s_blocks, s_idx, t_blocks, t_idx = layers
            check_layer_indices(student, s_blocks, s_idx, "student", f"{stage.where}: distill_layers")
            check_layer_indices(teacher, t_blocks, t_idx, "teacher", f"{stage.where}: distill_layers")
            pairs += parse_pairs(layer_pairs(s_blocks, s_idx, t_blocks, t_idx, stage.raw.get("distill_layers_loss"),
                                             stage.raw.get("distill_layers_weight", 1.0),
                                             stage.raw.get("distill_layers_align"), stage.where))
        names = [p.name for p in pairs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{stage.where}: two distillation terms share a name ({names}); rename one.")
        if not pairs:
            raise ConfigError(f"{stage.where} has a teacher but nothing to distil: add `distill_loss`, `distill` "
                              f"pairs or distill_layers_student/teacher (or drop the teacher).")
        return pairs

    def _hand_off(self, stage, task, cfg, config, trainer, removal, layers):
        folder = trainer.save_dir
        if stage.handoff == "best":
            weights = os.path.join(folder, "best_model", MODEL_FILE)
        else:
            weights = os.path.join(folder, f"iter_{trainer.iter}", MODEL_FILE)
        record = {"name": stage.name, "folder": folder, "config": config, "weights": weights,
                  "iters": trainer.iter, "best_metric": trainer.best_metric, "best_iter": trainer.best_iter,
                  "cut": None, "removed_uncut": None, "layers": None}
        if layers:
            record["layers"] = {"student_blocks": layers[0], "student": list(layers[1]),
                                "teacher_blocks": layers[2], "teacher": list(layers[3])}
        if removal is not None:
            removal.set_iter(max(trainer.iter, removal.remove_iters))
            if stage.cut:
                record["cut"] = self._cut(stage, task, cfg, trainer.student, removal, folder)
            else:
                record["removed_uncut"] = {k: list(v) for k, v in stage.removal.items()}
        self.state["done"][stage.name] = record
        self._save_state()
        self.log(f"== {stage.where} done: hands on {handed_weights(record)}")
        return record

    def _cut(self, stage, task, cfg, student, removal, folder):
        student = unwrap(student)
        counts = block_counts(student, removal.removal)
        small_state = cut_state_dict(student.state_dict(), removal.removal, counts)
        out_dir = os.path.join(folder, "cut")
        info = {"removal": {k: list(v) for k, v in removal.removal.items()}, "counts": counts,
                "kept": removal.kept(), "weights": os.path.join(out_dir, MODEL_FILE)}
        if env.is_main_process():
            save_checkpoint(out_dir, small_state, metrics={"cut_from": stage.name, **info})
        env.barrier()
        kept = ", ".join(f"{n}: {counts[n]} -> {len(k)} blocks" for n, k in info["kept"].items())
        self.log(f"cut {kept}; weights renumbered into {info['weights']}")
        following = self._next_stage_from(stage)
        if following is not None:
            n_task, n_cfg = launch.load_task_config(following.student, following.opts)
            small = n_task.build_model(n_cfg)
            try:
                load_model_weights(small, info["weights"], "cut weights")
            except ConfigError as e:
                raise ConfigError(f"{following.where} starts from the cut weights of {stage.where}, but its "
                                  f"student config does not build the model with {kept}: {e}") from None
            if not env.is_main_process():
                return info  # the weights are rank 0's (BatchNorm statistics differ between processes)
            diff = compare_outputs(student, small, task.example_inputs(cfg))
            info["max_abs_diff"] = diff
            self.log(f"cut checked: {os.path.basename(following.student)} loads the cut weights strictly; outputs "
                     f"equal the un-cut model's (removed blocks as identities) to {diff:.2e}")
            if diff > 1e-4:
                raise SlimError(f"The cut model's outputs differ from the un-cut model's by {diff:.3g}: the forward "
                                f"of this model depends on more than its blocks (e.g. on the number of blocks).")
        return info

    def _next_stage_from(self, stage):
        """The next stage when it starts from this one's weights with a student config of its own."""
        if stage.index + 1 >= len(self.stages):
            return None
        nxt = self.stages[stage.index + 1]
        if (nxt.init == "previous" or (_is_stage_ref(nxt.init) and nxt.init["stage"] == stage.name)) \
                and nxt.student != "previous":
            return nxt
        return None

    # ----- the whole pipeline -------------------------------------------------------------------------
    def check_models(self):
        """Block-list names and indices of every stage, checked on the built models before any training."""
        built = {}

        def model_of(config, opts):
            key = (config, tuple(opts))
            if key not in built:
                task, cfg = launch.load_task_config(config, opts)
                built[key] = task.build_model(cfg)
            return built[key]

        for stage in self.stages:
            if stage.student == "previous":
                continue
            if stage.removal:
                check_removal(model_of(stage.student, stage.opts), stage.removal, f"{stage.where}: remove_layers")
            if stage.layer_student:
                check_layer_indices(model_of(stage.student, stage.opts), stage.layer_blocks, stage.layer_student,
                                    "student", f"{stage.where}: distill_layers")

    def run(self):
        env.init_distributed()
        self._load_state()
        self.check_models()
        self._save_state()
        done = self.state["done"]
        for stage in self.stages:
            if stage.name in done:
                self.log(f"== {stage.where}: finished earlier, hands on {handed_weights(done[stage.name])}")
                continue
            try:
                self.run_stage(stage)
            except KeyboardInterrupt:
                self.log(f"pipeline interrupted in {stage.where}; run the same command again to continue there.")
                raise
        final = handed_weights(done[self.stages[-1].name])
        self.log(f"pipeline finished: final weights {final}")
        self.write_summary()
        return final

    def write_summary(self):
        if not env.is_main_process():
            return
        lines = ["| stage | config | iterations | best metric (iter) | hands on |", "| --- | --- | --- | --- | --- |"]
        for stage in self.stages:
            r = self.state["done"].get(stage.name)
            if r is None:
                continue
            best = f"{r['best_metric']:.4f} ({r['best_iter']})" if r.get("best_metric") is not None else "-"
            lines.append(f"| {stage.name} | {_short(r['config'])} | {r['iters']} | {best} | "
                         f"{_short(handed_weights(r))} |")
        with open(os.path.join(self.save_dir, "summary.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log("\n" + "\n".join(lines))


def _short(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# ----- command line -----------------------------------------------------------------------------------
_PER_STAGE_FLAGS = ("--iters", "--epochs", "--student_config", "--teacher_config", "--teather_config",
                    "--teacher_pretrained", "--init_weights", "--batch_size", "--learning_rate", "--resume_model", "-r",
                    "-c", "-t", "--config")


def parse_args(argv):
    p = launch.make_parser(__doc__)
    p.add_argument("--pipeline", required=True, help="the pipeline yaml (a `stages:` list)")
    p.add_argument("--save_dir", default=None, help="pipeline folder (default: the yaml's save_dir, else "
                   "output/pipeline/<yaml name>); rerunning with the same folder continues the pipeline")
    p.add_argument("--seed", type=launch.non_negative_int, default=None)
    p.add_argument("--data_seed", type=launch.non_negative_int, default=None,
                   help="seed of the sample order and augmentations (default: --seed)")
    p.add_argument("--device", default=None)
    p.add_argument("--log_iters", type=launch.positive_int, default=None)
    p.add_argument("--save_interval", type=launch.positive_int, default=None)
    p.add_argument("--keep_checkpoint_max", type=int, default=None)
    p.add_argument("--num_workers", type=launch.non_negative_int, default=None)
    p.add_argument("--do_eval", action="store_true", default=None)
    p.add_argument("--eval_interval", type=launch.positive_int, default=None)
    p.add_argument("--use_vdl", action="store_true", default=None)
    launch.add_precision_flags(p)
    launch.add_integrity_flags(p)
    p.add_argument("--allow_untrained_teacher", action="store_true",
                   help="stages may use a teacher without weights (pipeline tests only)")
    p.add_argument("-o", "--opts", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the pipeline yaml, e.g. -o stages.1.iters=50 defaults.seed=1")
    return p.parse_args(argv)


def _cache_options(cache):
    """TrainOptions' teacher-cache settings from a stage's `teacher_cache` (the teacher is built for the stage,
    and runs only for the entries the cache lacks)."""
    if not cache:
        return {}
    return {"teacher_cache": cache["dir"], "teacher_cache_dtype": cache["dtype"], "teacher_cache_topk": cache["topk"],
            "teacher_cache_rebuild": cache["rebuild"], "teacher_cache_repair": cache["repair"]}


def _amp_flags(args):
    """--precision / --amp_level / --amp as a stage's `amp` setting; None when none was given. A lone
    --amp_level keeps each stage's precision."""
    precision, level = launch.precision_from_args(args)
    if precision is None and level is None:
        return None
    return {"precision": precision, "level": level}


def main(argv):
    given = [a.split("=")[0] for a in argv]
    refused = [f for f in _PER_STAGE_FLAGS if f in given]
    if refused:
        raise ConfigError(f"{', '.join(refused)} cannot be combined with --pipeline: configs, weights and "
                          f"iterations are set per stage in the pipeline yaml (or with -o stages.N.iters=..., "
                          f"-o stages.N.opts=[batch_size=8]). An interrupted pipeline continues when the same "
                          f"command runs again.")
    args = parse_args(argv)
    env.set_device(args.device)
    raw, stages = load_pipeline(args.pipeline, args.opts)
    save_dir = args.save_dir or raw.get("save_dir") or os.path.join(
        "output", "pipeline", os.path.splitext(os.path.basename(args.pipeline))[0])
    flags = {k: getattr(args, k) for k in RUN_KEYS if k != "amp"}
    flags["amp"] = _amp_flags(args)
    flags["allow_untrained_teacher"] = bool(args.allow_untrained_teacher)
    Pipeline(args.pipeline, stages, os.path.abspath(save_dir), flags).run()
    return 0
