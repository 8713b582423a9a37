"""The one training loop, for every task, with or without a teacher.

    trainer = Trainer(task, cfg, student, teacher=teacher, pairs=pairs, options=TrainOptions(save_dir=...))
    trainer.train()

Loss of a step = the task's weighted terms (e.g. `loss: {types: [CrossEntropyLoss], coef: [1]}`)
+ the weighted distillation terms (logits `distill_loss` and feature pairs), each logged by name.
Iteration-based (`iters`) or epoch-based (`epochs`); warm-up by iterations or epochs (see optim.py).
Checkpoints hold the student alone in model.pdparams; connectors, optimizer, schedule, random states
and the iteration are saved beside it, so `resume_model` continues exactly where a run stopped
(`resume_model="auto"`: the newest complete checkpoint in save_dir, or a fresh start when there is none).
With `ema:` in the config (ema.py), evaluation and model.pdparams use the moving average of the weights.
Mixed precision (`precision`, `amp_level`; amp.py): fp16 or bf16 for student and teacher, losses in fp32; a
fp16 run's loss scale is saved in train_state.pdstates and restored on resume.

Host syncs: the loss terms of a step stay on the device (one stacked vector per step); they are read, in one
transfer per log step, by `trainer.last_losses`, the LoggerHook (every `log_iters`), and before a checkpoint or
an evaluation. A NaN/Inf loss therefore stops the run with NonFiniteLossError (naming the step and its terms)
at the next log step, checkpoint or evaluation at the latest, never later than `log_iters` steps after it
happened, and before any checkpoint holds the diverged weights. In fp16 a step the loss scaler skips is not an
error; MAX_SKIPPED_STEPS (amp.py) skipped steps in a row are.

Stopping: SIGTERM, SIGUSR1 and a first Ctrl-C (SIGINT) ask the run to stop. The current step finishes, a
resumable `iter_N` is written (unless the periodic save just wrote it) and StopRequested is raised: the
command exits with 128 + the signal's number (SIGTERM: 143, Ctrl-C: 130). A second Ctrl-C interrupts at once,
without saving. Under `paddle.distributed.launch` every process stops at the same iteration: the processes
agree at the next log step (every `log_iters` iterations), where the losses are read anyway. During the
set-up (before the first batch is loaded) signals act as usual: there is nothing to save yet.

The teacher (teacher.py) is one object whatever it is: none, live teachers through the Distiller, their
tensors read from a teacher-output cache (teacher_cache.py: samples keyed by (epoch, index), augmentation
seeded by `data_seed`, default `seed`, apart from the student's seed), or a model's own frozen teachers;
each step asks it for the student's output and the distillation terms.
"""
import json
import math
import os
import signal
import time
from collections import OrderedDict

import paddle

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError, NonFiniteLossError
from slim.distill.precision import float32, float32_losses
from . import env
from .amp import MAX_SKIPPED_STEPS, Precision, as_dict, build_scaler, decorate_for_o2, train_step
from .analysis import describe_model, describe_step_memory
from .checkpoint import (MODEL_FILE, apply_state, check_save_dir_usable, find_latest_checkpoint, iter_checkpoints,
                         portable_optimizer_state, read_checkpoint, restore_optimizer_state, save_checkpoint,
                         set_aside_previous_run)
from .data import BatchStream
from .ema import ModelEMA, ema_settings
from .hooks import CheckpointHook, EvalHook, LoggerHook, LossWeightHook, VisualDLHook
from .optim import build_lr_scheduler, build_optimizer
from .signals import StopRequested, StopSignals
from .storage import writing
from .teacher import CacheOptions, Setup, describe_teachers, make_teacher


AUTO_RESUME = "auto"


class TrainOptions:
    """Run settings that are not part of the model/data config (they come from command-line flags)."""

    def __init__(self, save_dir="output", log_iters=10, save_interval=1000, keep_checkpoint_max=5, do_eval=False,
                 eval_interval=None, use_vdl=False, num_workers=0, seed=None, resume_model=None,
                 lr_scale=1.0, log_file="record.txt", overwrite=False, analyse=False, precision="fp32",
                 amp_level="O1", data_seed=None, teacher_cache=None, teacher_cache_dtype="float16",
                 teacher_cache_topk=None, teacher_cache_rebuild=False, teacher_cache_repair=False):
        self.save_dir, self.log_iters, self.save_interval = save_dir, log_iters, save_interval
        self.keep_checkpoint_max, self.do_eval, self.use_vdl = keep_checkpoint_max, do_eval, use_vdl
        self.eval_interval = save_interval if eval_interval is None else eval_interval
        self.num_workers, self.seed, self.resume_model = num_workers, seed, resume_model
        self.lr_scale, self.log_file = lr_scale, log_file
        self.overwrite = overwrite  # a new run in a save_dir holding another: set the other aside first
        self.analyse = analyse  # log the measured memory of one training step at the start
        self.precision, self.amp_level = precision or "fp32", amp_level or "O1"  # see amp.py
        # the seed of sample order and augmentation (None: `seed`), apart from the model's
        self.data_seed = data_seed
        # a folder of teacher outputs (teacher_cache.py); dtype float16|float32, top-k logits, rebuild
        self.teacher_cache, self.teacher_cache_dtype = teacher_cache, teacher_cache_dtype or "float16"
        self.teacher_cache_topk, self.teacher_cache_rebuild = teacher_cache_topk, teacher_cache_rebuild
        self.teacher_cache_repair = teacher_cache_repair  # check every entry first, mark damaged ones missing


def check_save_dir_is_free(save_dir, resume_model, overwrite=False, log_file="record.txt"):
    """Refuse to start a new run over the checkpoints of another one (nothing of the user's is lost).
    Any resume, `auto` included, continues the run that is there. With `overwrite`, the other run's
    checkpoints and logs are moved into SAVE_DIR/previous_run_<N>/ (by the first process) instead; the
    lines saying so are returned, for the new run's log."""
    check_save_dir_usable(save_dir)
    if resume_model:
        if overwrite:
            raise ConfigError("--overwrite starts a new run and --resume_model continues the one in --save_dir; "
                              "give one of them.")
        return []
    if overwrite:
        return set_aside_previous_run(save_dir, log_file) if env.is_main_process() else []
    taken = [os.path.basename(p) for _, p in iter_checkpoints(save_dir)]
    if os.path.isfile(os.path.join(save_dir, "best_model", MODEL_FILE)):
        taken.append("best_model")
    if taken:
        last = iter_checkpoints(save_dir)
        hint = (f"--resume_model {AUTO_RESUME} (the newest complete checkpoint) or --resume_model {last[-1][1]} "
                f"to continue it, ") if last else ""
        raise ConfigError(f"--save_dir {save_dir} already holds checkpoints of another run "
                          f"({', '.join(taken[:6])}). Pass {hint}--overwrite to start a new run there (the "
                          f"earlier one is moved into {os.path.join(save_dir, 'previous_run_<N>')}, nothing is "
                          f"deleted), or choose another --save_dir (nothing was overwritten).")
    return []


class Trainer:
    def __init__(self, task, cfg, student, teacher=None, pairs=(), adaptors=(None, None), options=None,
                 hooks=None, task_loss=None, notes=()):
        self.task, self.cfg = task, cfg
        self.options = options or TrainOptions()
        self.save_dir = self.options.save_dir
        self.student = student
        # a model, a TeacherSource (built on first need) or a dict of them (several teachers); at set-up it
        # becomes the run's one teacher object (teacher.py), `teacher_source`
        self._teacher, self.teacher_source = teacher, None
        self.pairs, self.adaptors = list(pairs), adaptors
        self.extra_hooks = list(hooks or [])
        self.task_loss = task_loss or task.build_task_loss(cfg)
        self.iter = self.start_iter = 0
        self.epoch = 0
        self.best_metric, self.best_iter, self.last_eval_iter = None, None, None
        self.last_batch_cost, self.last_reader_cost, self.last_batch_size = 0.0, 0.0, 0
        self._pending = []  # (iteration, StepLosses) of steps whose losses are still on the device
        self._read = []  # (iteration, OrderedDict name -> float) read but not yet taken by take_losses()
        self._last_read = OrderedDict()
        self.skipped_in_a_row = 0  # fp16: steps in a row the loss scaler skipped
        self.precision, self.scaler = Precision("fp32"), None
        self.vdl_writer = None
        self.ema = None
        self._log_file = None
        self._notes = list(notes)  # lines logged before the run folder existed (weights loaded, ...)
        self.world = 1
        self.stop_signals = StopSignals()
        self._saved_iter = None  # the iteration of the last iter_N written by this run

    # ----- logging ----------------------------------------------------------------------------------
    def log(self, message):
        if not env.is_main_process():
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(line, flush=True)
        if self._log_file is not None:
            log_file, self._log_file = self._log_file, None  # a full disk: no second attempt while stopping
            with writing(log_file.name, "the training log", kind="log", hint=self._disk_hint()):
                log_file.write(line + "\n")
                log_file.flush()
            self._log_file = log_file

    def _disk_hint(self):
        return (f"Checkpoints already in {self.save_dir} are kept. Free some space or give --save_dir on a larger "
                f"disk, then continue with --resume_model auto.")

    def record_scalars(self, scalars, step):
        if not env.is_main_process():
            return
        if self.vdl_writer is not None:
            vdl_dir = os.path.join(self.save_dir, "vdl")
            with writing(vdl_dir, "the VisualDL log", kind="vdl", hint=self._disk_hint()):
                for tag, value in scalars.items():
                    self.vdl_writer.add_scalar(tag, float(value), step)
                self.vdl_writer.flush()  # its writer thread swallows write errors; a flush here raises them
        history = os.path.join(self.save_dir, "history.jsonl")
        with writing(history, "the training history", kind="history", hint=self._disk_hint()):
            with open(history, "a") as f:
                f.write(json.dumps({"iter": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")

    def current_lr(self):
        return float(self.optimizer.get_lr())

    @property
    def distiller(self):
        """The Distiller when separate teachers are compared with the student, else None."""
        return self.teacher_source.distiller if self.teacher_source is not None else None

    @property
    def teacher(self):
        """The teacher model built so far (None when there is none or it is not built), {name: model} of
        several."""
        models = self.teacher_source.models() if self.teacher_source is not None else []
        return models[0][1] if len(models) == 1 else (OrderedDict(models) if models else None)

    # ----- set-up: the steps in the order they must happen ---------------------------------------------------
    def _setup(self):
        self._open_run()  # the process group; --save_dir (another run's refused or set aside); the log; seeds
        self._build_data()  # the training stream (order and augmentation from the data seed), val set, example
        self._build_models()  # precision, teachers, O2 casts before DataParallel wraps the student; the teacher
        self._build_optimizer()  # schedule, optimizer (student, connectors, trainable losses), loss scale, EMA
        self._restore()  # resume: needs the optimizer and connectors; may move the schedule
        self._start()  # signal handlers before the loader forks; the stream at the resumed iteration; cache plan

    def _open_run(self):
        opts = self.options
        self.world = env.init_distributed()
        set_aside = check_save_dir_is_free(self.save_dir, opts.resume_model, getattr(opts, "overwrite", False),
                                           opts.log_file)
        if env.is_main_process():
            os.makedirs(self.save_dir, exist_ok=True)
            self._log_file = open(os.path.join(self.save_dir, opts.log_file), "a")
        for line in set_aside + self._notes:
            self.log(line)
        env.seed_everything(opts.seed)

    def _build_data(self):
        opts = self.options
        self.settings = self.task.training_settings(self.cfg)
        self.train_set = self.task.build_dataset(self.cfg, "train")
        self.batch_size = int(self.settings.get("batch_size") or 1)
        data_seed = getattr(opts, "data_seed", None)
        self.data_seed = (opts.seed or 0) if data_seed is None else int(data_seed)
        self.stream = BatchStream(self.train_set, self.batch_size, self.task.collate_fn("train"), opts.num_workers,
                                  seed=self.data_seed, rank=env.rank(), world_size=self.world,
                                  shuffle=bool(self.settings.get("shuffle", True)),
                                  drop_last=bool(self.settings.get("drop_last", True)))
        self.iters_per_epoch = self.stream.iters_per_epoch
        self.max_iters = self._total_iters()
        self.val_set = self.task.build_dataset(self.cfg, "val") if opts.do_eval else None
        self.example = self.stream.collate_fn([self.stream.dataset[(0, 0)]]) if self.stream.collate_fn else None

    def _build_models(self):
        opts = self.options
        self.precision = Precision(getattr(opts, "precision", "fp32"), getattr(opts, "amp_level", "O1"))
        cache = getattr(opts, "teacher_cache", None)
        cache = CacheOptions(cache, opts.teacher_cache_dtype, opts.teacher_cache_topk, opts.teacher_cache_rebuild,
                             getattr(opts, "teacher_cache_repair", False)) if cache else None
        teacher = make_teacher(self.task, self.student, self._teacher, self.pairs, self.adaptors, cache)
        teacher.build_now(self.log, self.precision)  # without a cache the teachers run every step: build them
        setup = Setup(self.task, self.cfg, self.log, self.precision, self.train_set, self.batch_size, self.world,
                      self.data_seed, self.example, self.stream)
        self.log(describe_model("student", self.student, setup.args, setup.kwargs))
        describe_teachers(teacher, self.log, setup.args, setup.kwargs)
        self.log(self.precision.describe())
        decorate_for_o2(self.precision, unwrap(self.student), *[m for _, m in teacher.models()])
        self.model = teacher.model = paddle.DataParallel(self.student) if self.world > 1 else self.student
        teacher.prepare(setup)
        self.teacher_source = teacher
        if getattr(opts, "analyse", False):  # every process measures (the step's backward all-reduces)
            if self.distiller is not None:
                teacher.ensure_built()  # measured too, although the cache may spare running it
            self.log(describe_step_memory(self, self.batch_size))

    def _build_optimizer(self):
        lr_scale, warmup_scale = self._batch_scaling(self.batch_size * self.world)
        self.lr = build_lr_scheduler(self.settings, self.max_iters, self.iters_per_epoch, lr_scale, warmup_scale)
        self.named_params = [(n, p) for n, p in unwrap(self.student).named_parameters()]
        self.named_params += self.teacher_source.named_parameters()  # connectors, trainable loss layers
        self.optimizer = build_optimizer(self.settings, self.named_params, self.lr,
                                         multi_precision=self.precision.enabled and self.precision.level == "O2")
        self.scaler = build_scaler(self.precision)
        ema = ema_settings(self.settings.get("ema"))
        self.ema = ModelEMA(unwrap(self.student), **ema) if ema else None
        if self.ema is not None:
            self.log(f"weights averaged over training (EMA, decay {ema['decay']}, {ema['type']}): evaluation and "
                     f"model.pdparams use the average")
        total = sum(int(p.size) for _, p in self.named_params if not p.stop_gradient)
        self.log(f"training {total:,} parameters for {self.max_iters} iterations "
                 f"({self.iters_per_epoch} per epoch, batch {self.batch_size} x {self.world} process(es))")

    def _restore(self):
        resume, ckpt = self.options.resume_model, None
        if isinstance(resume, str) and resume.lower() == AUTO_RESUME:
            resume, ckpt = self._find_resumable()
        if resume:
            self._resume(resume, ckpt)

    def _start(self):
        opts = self.options
        self.stop_signals.install()  # before the data loader forks its workers (see StopSignals)
        self.stream.start_at(self.iter)
        self.epoch = self.stream.epoch
        self.teacher_source.plan(self._visits(self.batch_size * self.world), self.log)
        # LossWeightHook first: a scheduled loss weight (weight_schedule) is set before anything else of a step
        self.hooks = [LossWeightHook(), LoggerHook(opts.log_iters),
                      CheckpointHook(opts.save_interval, opts.keep_checkpoint_max)]
        if opts.do_eval:
            self.hooks.append(EvalHook(opts.eval_interval))
        if opts.use_vdl:
            self.hooks.insert(0, VisualDLHook())
        self.hooks += self.extra_hooks

    def _visits(self, total_batch):
        """{epoch: samples read in it} for the iterations this run still has to train."""
        visits = OrderedDict()
        it = self.iter
        while it < self.max_iters:
            epoch = it // self.iters_per_epoch
            end = min((epoch + 1) * self.iters_per_epoch, self.max_iters)
            visits[epoch] = (end - it) * total_batch
            it = end
        return visits

    def _batch_scaling(self, total_batch):
        """Linear scaling when the total batch differs from the config's `reference_batch_size`: the
        learning rate by total/reference, the warm-up (in iterations) by reference/total."""
        reference = self.settings.get("reference_batch_size")
        scale = float(self.options.lr_scale)
        if not reference or int(reference) == total_batch:
            return scale, 1.0
        ratio = total_batch / float(reference)
        self.log(f"total batch {total_batch} ({total_batch // env.world_size()} x {env.world_size()} process(es)) "
                 f"differs from the config's reference batch {reference}: learning rate scaled x{ratio:g}, "
                 f"warm-up iterations x{1 / ratio:g} (linear scaling rule)")
        return scale * ratio, 1.0 / ratio

    def _total_iters(self):
        iters, epochs = self.settings.get("iters"), self.settings.get("epochs")
        if iters and epochs:
            raise ConfigError(f"The config sets both iters ({iters}) and epochs ({epochs}); keep one "
                              f"(-o iters=null or -o epochs=null).")
        if epochs:
            return int(epochs) * self.iters_per_epoch
        if not iters:
            raise ConfigError("Set the length of training: `iters` (or --iters) or `epochs` in the config.")
        return int(iters)

    def _find_resumable(self):
        """`--resume_model auto`: the newest complete iter_N of save_dir, (path, checkpoint) or (None, None).
        The first process chooses (and logs what it skips); the others take the same folder."""
        path = ckpt = None
        if env.is_main_process():
            path, ckpt = find_latest_checkpoint(self.save_dir, log=self.log)
        if self.world > 1:
            chosen = []
            paddle.distributed.all_gather_object(chosen, path)
            path = chosen[0]
            if path is not None and ckpt is None:
                ckpt = read_checkpoint(path)
        if path is None:
            self.log(f"--resume_model {AUTO_RESUME}: no complete checkpoint in {self.save_dir}; starting a new run "
                     f"from iteration 0")
        else:
            self.log(f"--resume_model {AUTO_RESUME}: the newest complete checkpoint is {path}")
        return path, ckpt

    def _resume(self, path, ckpt=None):
        ckpt = ckpt if ckpt is not None else read_checkpoint(path)
        ema = ckpt.get("ema")
        trained = ema["training_weights"] if ema else ckpt["model"]  # model.pdparams holds the average then
        apply_state(unwrap(self.student), trained, f"the student weights of {path}")
        if self.ema is not None and ema:
            self.ema.set_state_dict(ema, path)
        elif self.ema is not None:
            self.log(f"{path} was saved without `ema:`; the average starts from iteration {ckpt['state']['iter']}")
        self.teacher_source.set_state_dict(ckpt.get("connectors"), path)
        self.optimizer.set_state_dict(restore_optimizer_state(ckpt["optimizer"], self.named_params))
        state = ckpt["state"]
        if self.scaler is not None:
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
                self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
            else:
                self.log(f"{path} holds no loss-scale state (it was saved by a run without fp16): the loss scale "
                         f"starts again from its initial value")
        self.iter = self.start_iter = int(state["iter"])
        self.best_metric, self.best_iter = state.get("best_metric"), state.get("best_iter")
        env.set_rng_state(state["rng"][env.rank()] if isinstance(state["rng"], list) else state["rng"])
        saved_max = state.get("max_iters")
        if saved_max is not None and int(saved_max) != self.max_iters and self.iter < self.max_iters:
            self._rescale_schedule(int(saved_max))
        if self.iter >= self.max_iters:
            self.log(f"{path} is at iteration {self.iter}, the end of this run ({self.max_iters}); "
                     f"raise --iters to train further.")
        self.log(f"resumed from {path} at iteration {self.iter}")

    def _rescale_schedule(self, saved_max):
        """A resume with another length (e.g. a larger --iters): the schedule was built for this run's
        max_iters and the checkpoint restored its position; recompute the rate at that position, which the
        checkpoint holds as computed for the old length (the next step would use it)."""
        if not isinstance(self.lr, paddle.optimizer.lr.LRScheduler):
            return
        before = self.current_lr()
        self.lr.step(self.lr.last_epoch)
        self.log(f"the checkpoint was saved in a run of {saved_max} iterations, this one has {self.max_iters}: "
                 f"the learning-rate schedule now runs to iteration {self.max_iters} (rate at iteration "
                 f"{self.iter}: {before:.6g} -> {self.current_lr():.6g})")

    # ----- the loop ---------------------------------------------------------------------------------
    def train(self):
        try:
            self._setup()
            try:
                self._loop()
            finally:
                self.close()
        finally:
            self.stop_signals.restore()
        return self

    def _loop(self):
        self._call("before_train")
        self._set_train_mode()
        try:
            while self.iter < self.max_iters:
                self._call("before_step")
                t0 = time.perf_counter()
                batch = next(self.stream)
                self.last_reader_cost = time.perf_counter() - t0
                self.epoch = self.stream.epoch
                self.task.set_epoch(self.epoch)
                step = self.run_step(batch)
                self.iter += 1
                self._add_step(step)
                self.last_batch_cost = time.perf_counter() - t0
                self.last_batch_size = self.task.batch_size_of(batch)
                self._call("after_step")
                if self.iter < self.max_iters and self._stop_check_due():
                    signum = self._agreed_stop()
                    if signum:
                        self._stop(signum)
        except StopRequested:
            raise
        except KeyboardInterrupt:
            if self.stop_signals.forced:  # a second Ctrl-C: out now, the step may be half done, so no save
                last = iter_checkpoints(self.save_dir)
                raise KeyboardInterrupt(
                    f"interrupted again after iteration {self.iter}: stopped at once without saving. "
                    + (f"Continue from the newest checkpoint, {last[-1][1]}, with --resume_model {AUTO_RESUME}."
                       if last else "No checkpoint of this run was saved.")) from None
            if self.iter > self.start_iter:
                path = self._save_now()
                self.log(f"interrupted at iteration {self.iter}; saved {path}. Continue with "
                         f"--resume_model {path}")
            raise
        self._call("after_train")
        if self.stop_signals.signum:
            self.log(f"{signal.Signals(self.stop_signals.signum).name} received at the end of the run: training "
                     f"had finished and its final checkpoint is saved")
        if self.best_metric is not None:
            self.log(f"best {self.task.primary_metric} {self.best_metric:.4f} at iteration {self.best_iter}, "
                     f"saved in {os.path.join(self.save_dir, 'best_model')}")

    def _stop_check_due(self):
        """One process looks at its flag after every step (no sync). Several processes agree only at log
        steps (every log_iters iterations), where the losses are read anyway, so the agreement adds no host
        sync to the other steps; a stop request is honoured there."""
        return self.world == 1 or self.iter % max(int(self.options.log_iters), 1) == 0

    def _agreed_stop(self):
        """The signal asking to stop (0: none). Several processes agree with a max all-reduce, so that all
        stop after the same iteration; a single process only reads the handler's flag (no sync)."""
        signum = self.stop_signals.signum
        if self.world > 1:
            flag = paddle.to_tensor([signum], dtype="int32")
            paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
            signum = int(flag.numpy()[0])
        return signum

    def _stop(self, signum):
        """Stop at a signal's request: a resumable iter_N (rank 0 writes it), one line, StopRequested."""
        name = signal.Signals(signum).name
        self.log(f"{name} received: stopping after iteration {self.iter}/{self.max_iters}, saving a checkpoint")
        path = self._save_now()
        message = (f"stopped by {name} at iteration {self.iter}/{self.max_iters}; checkpoint {path}. Continue "
                   f"with the same command and --resume_model {AUTO_RESUME} (or --resume_model {path}).")
        self.log(message)
        raise StopRequested(message, signum)

    def _save_now(self):
        """iter_N of the current iteration, unless this run has just written it."""
        if self._saved_iter == self.iter:
            return os.path.join(self.save_dir, f"iter_{self.iter}")
        hook = next((h for h in getattr(self, "hooks", ()) if isinstance(h, CheckpointHook)), None)
        return hook.save(self) if hook is not None else self.save_checkpoint()

    def close(self):
        """Release hooks, files and the VisualDL writer (after every hook's after_train has written)."""
        if self.vdl_writer is not None:
            self.vdl_writer.close()
            self.vdl_writer = None
        if self.teacher_source is not None:
            self.teacher_source.close(self.log)
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _call(self, name):
        for hook in self.hooks:
            getattr(hook, name)(self)

    def _set_train_mode(self):
        self.teacher_source.train()

    def run_step(self, batch):
        """One training step (amp.train_step); returns its StepLosses, still on the device."""
        args, kwargs = self.task.model_inputs(batch, "train")
        low = self.precision.enabled

        def forward():
            label = self.task.distill_label(batch) if self.distiller is not None else None
            student_out, distill_terms = self.teacher_source.forward(args, kwargs, label, self.stream.cache_keys,
                                                                     self.iter)
            terms = OrderedDict()
            if low:  # the task's losses in fp32 too
                with float32_losses():
                    terms.update(self.task_loss(float32(student_out), batch))
            else:
                terms.update(self.task_loss(student_out, batch))
            terms.update(distill_terms)
            return terms

        step = train_step(forward, self.optimizer, self.precision, self.scaler)
        if self.ema is not None:
            self.ema.update(unwrap(self.student))
        if isinstance(self.lr, paddle.optimizer.lr.LRScheduler):
            self.lr.step()
        return step

    # ----- loss values: read from the device at log steps ----------------------------------------
    def _add_step(self, step):
        self._pending.append((self.iter, step))
        if self.scaler is not None:
            self.skipped_in_a_row = self.skipped_in_a_row + 1 if step.skipped else 0
            if self.skipped_in_a_row >= MAX_SKIPPED_STEPS:
                self.read_losses()  # the values, for the message
                raise NonFiniteLossError(
                    f"The loss scaler skipped {self.skipped_in_a_row} steps in a row (NaN or Inf loss or "
                    f"gradients) up to iteration {self.iter} ({self._format_terms(self._last_read)}). Lower the "
                    f"learning rate or the weight of the diverging term, check the data, train in fp32 or bf16, "
                    f"or resume from the last checkpoint in {self.save_dir}.")

    @staticmethod
    def _format_terms(values):
        return ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k != "loss")

    def read_losses(self):
        """Bring the pending loss values to the host (one transfer) and check them: a NaN/Inf loss raises
        NonFiniteLossError naming the first such step and its terms (in fp16, steps the scaler skipped are
        left out instead: see amp.py)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        names = pending[0][1].names
        if all(p.names == names for _, p in pending):
            if len(pending) > 1:
                with paddle.no_grad():
                    rows = paddle.stack([p.values for _, p in pending]).numpy()
            else:
                rows = pending[0][1].values.numpy()[None]
            values = [as_dict(names, row) for row in rows]
        else:  # the terms changed between steps (rare): one transfer per step
            values = [p.read() for _, p in pending]
        for (iteration, step), row in zip(pending, values):
            finite = all(math.isfinite(v) for v in row.values())
            if not finite and self.scaler is not None and step.skipped:
                continue  # skipped by the loss scaler: not logged, not an error (MAX_SKIPPED_STEPS is)
            if not finite:
                loss = row.get("loss", float("nan"))
                raise NonFiniteLossError(
                    f"The training loss became {loss} at iteration {iteration} ({self._format_terms(row)}). "
                    f"Lower the learning rate or the weight of the diverging term, check the data, or resume from "
                    f"the last checkpoint in {self.save_dir}. (Losses are checked every log step, "
                    f"--log_iters {getattr(self.options, 'log_iters', 1)}, and before checkpoints; this was "
                    f"found after iteration {self.iter}.)")
            self._read.append((iteration, row))
            self._last_read = row

    def take_losses(self):
        """The loss values of the steps since the previous call, [(iteration, OrderedDict)], read and checked
        (the LoggerHook averages them at its log steps)."""
        self.read_losses()
        taken, self._read = self._read, []
        return taken

    @property
    def last_losses(self):
        """The loss values of the last step (name -> float; `loss` first), read from the device (a host sync:
        hooks that read it every step bring one back)."""
        self.read_losses()
        return self._last_read

    # ----- checkpoints and evaluation ---------------------------------------------------------------
    def has_checkpoint(self, iteration):
        return os.path.isdir(os.path.join(self.save_dir, f"iter_{iteration}"))

    def _train_state(self):
        rng = env.rng_state()
        if env.world_size() > 1:
            gathered = []
            paddle.distributed.all_gather_object(gathered, rng)
            rng = gathered
        state = {"iter": self.iter, "epoch": self.epoch, "best_metric": self.best_metric,
                 "best_iter": self.best_iter, "rng": rng, "max_iters": self.max_iters}
        if self.scaler is not None:  # fp16: the loss scale and its counters, restored on resume
            state["scaler"] = self.scaler.state_dict()
            state["skipped_in_a_row"] = self.skipped_in_a_row
        return state

    def model_state(self):
        """The student's weights as saved and evaluated: the moving average when `ema:` is on."""
        model = unwrap(self.student)
        return self.ema.averaged_state(model) if self.ema is not None else model.state_dict()

    def save_checkpoint(self, name=None, metrics=None, full=True):
        self.read_losses()  # a diverged run stops here rather than save NaN weights
        state = self._train_state() if full else None
        path = os.path.join(self.save_dir, name or f"iter_{self.iter}")
        if env.is_main_process():
            connectors = self.teacher_source.state_dict()
            ema = None
            if self.ema is not None and full:
                ema = dict(self.ema.state_dict(), training_weights=unwrap(self.student).state_dict())
            save_checkpoint(path, self.model_state(), connectors,
                            portable_optimizer_state(self.optimizer.state_dict(), self.named_params) if full else None,
                            state, metrics, ema)
        env.barrier()
        if full and name is None:
            self._saved_iter = self.iter
        return path

    def evaluate(self):
        model = unwrap(self.student)
        trained = None
        if self.ema is not None:  # evaluate the average, then put the weights being trained back
            trained = {k: v.clone() for k, v in model.state_dict().items()}
            model.set_state_dict(self.ema.averaged_state(model))
        model.eval()
        try:
            with paddle.no_grad():
                metrics = self.task.evaluate(model, self.val_set, self.cfg, log=self.log)
        finally:
            if trained is not None:
                model.set_state_dict(trained)
            self._set_train_mode()
        return metrics

    def evaluate_and_track_best(self):
        self.read_losses()
        self.last_eval_iter = self.iter
        metrics = None
        if env.is_main_process():
            metrics = self.evaluate()
            self.record_scalars({f"Evaluate/{k}": v for k, v in metrics.items() if isinstance(v, float)}, self.iter)
            value = metrics[self.task.primary_metric]
            if self.best_metric is None or value > self.best_metric:
                self.best_metric, self.best_iter = value, self.iter
                save_checkpoint(os.path.join(self.save_dir, "best_model"), model_state=self.model_state(),
                                connector_state=self.teacher_source.state_dict(),
                                metrics={"iter": self.iter, **{k: v for k, v in metrics.items()
                                                               if isinstance(v, (int, float))}})
                self.task.save_eval_outputs(os.path.join(self.save_dir, "best_model"), log=self.log)
            self.log(f"[EVAL] The model with the best validation {self.task.primary_metric} "
                     f"({self.best_metric:.4f}) was saved at iter {self.best_iter}.")
        if env.world_size() > 1:  # every rank keeps the same best-so-far (it goes into checkpoints)
            shared = []
            paddle.distributed.all_gather_object(shared, (self.best_metric, self.best_iter))
            self.best_metric, self.best_iter = shared[0]
        return metrics
