"""Hooks: what happens around the training loop, kept out of it.

    class MyHook(Hook):
        def after_step(self, trainer):
            if trainer.iter % 100 == 0:
                print(trainer.last_losses)

The trainer calls before_train, before_step, after_step and after_train on each hook, in order.
`trainer.iter` is the number of iterations done (1 after the first step).
"""
import datetime
import math
import os
from collections import OrderedDict

from . import env
from .checkpoint import prune_checkpoints


class Hook:
    def before_train(self, trainer):
        pass

    def before_step(self, trainer):
        pass

    def after_step(self, trainer):
        pass

    def after_train(self, trainer):
        pass


def format_eta(seconds):
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class LoggerHook(Hook):
    """A `[TRAIN]` line every `log_iters`: each loss term, lr, batch_cost, reader_cost, ips and ETA.

    The loss values are read from the device only here, once per line (`trainer.take_losses()`); on a GPU the
    batch_cost of the steps in between is the time to queue their work, averaged over the line it is right."""

    def __init__(self, log_iters=10):
        self.log_iters = max(int(log_iters), 1)
        self._reset()

    def _reset(self):
        self.sums, self.count, self.batch_cost, self.reader_cost, self.samples = {}, 0, 0.0, 0.0, 0

    def after_step(self, trainer):
        self.count += 1
        self.batch_cost += trainer.last_batch_cost
        self.reader_cost += trainer.last_reader_cost
        self.samples += trainer.last_batch_size
        if trainer.iter % self.log_iters and trainer.iter != trainer.max_iters:
            return
        # the loss values of the steps since the last line: one read from the device (and the NaN/Inf check)
        rows = trainer.take_losses()
        for _, values in rows:
            for name, value in values.items():
                self.sums[name] = self.sums.get(name, 0.0) + value
        n = max(self.count, 1)
        skipped = self.count - len(rows)  # fp16: steps the loss scaler skipped (their losses are not averaged)
        means = {k: v / max(len(rows), 1) for k, v in self.sums.items()}
        batch_cost = self.batch_cost / n
        ips = self.samples * env.world_size() / max(self.batch_cost, 1e-9)
        eta = format_eta((trainer.max_iters - trainer.iter) * batch_cost)
        terms = ", ".join(f"{k}: {v:.5f}" for k, v in means.items() if k != "loss")
        weights = scheduled_weights(trainer)  # of the last step, for terms with a weight_schedule
        if weights:
            terms += ", weights: " + ", ".join(f"{k} {v:.4g}" for k, v in weights.items())
        trainer.log(f"[TRAIN] epoch: {trainer.epoch + 1}, iter: {trainer.iter}/{trainer.max_iters}, "
                    f"loss: {means.get('loss', 0.0):.5f}" + (f" ({terms})" if terms else "")
                    + f", lr: {trainer.current_lr():.6f}, batch_cost: {batch_cost:.4f}, "
                    f"reader_cost: {self.reader_cost / n:.5f}, ips: {ips:.4f} samples/sec | ETA {eta}"
                    + (f" | {skipped} step(s) skipped by the fp16 loss scaler" if skipped > 0 else ""))
        trainer.record_scalars({f"Train/{k}": v for k, v in means.items()}, trainer.iter)
        if weights:
            trainer.record_scalars({f"Train/weight/{k}": v for k, v in weights.items()}, trainer.iter)
        trainer.record_scalars({"Train/lr": trainer.current_lr(), "Train/batch_cost": batch_cost,
                                "Train/reader_cost": self.reader_cost / n}, trainer.iter)
        self._reset()


def scheduled_weights(trainer):
    """The current weights of the scheduled loss terms (LossWeightHook), name -> weight; empty without one."""
    for hook in getattr(trainer, "hooks", ()):
        if isinstance(hook, LossWeightHook):
            return hook.weights()
    return OrderedDict()


class LossWeightHook(Hook):
    """Loss weights that change over training (`weight_schedule:`, slim/distill/weight_schedule.py): before each
    step, every holder of scheduled terms (the distiller, a task loss with schedules) gets the step's position:
    `set_step(iteration, epoch, total_iters, total_epochs)`. The position comes from the iteration alone (epoch =
    iteration // iterations per epoch), so a resumed run continues its schedule. Does nothing without one."""

    def __init__(self):
        self.targets = []

    def before_train(self, trainer):
        holders = (getattr(trainer, "distiller", None), getattr(trainer, "task_loss", None))
        self.targets = [h for h in holders if h is not None and getattr(h, "has_schedules", False)]
        for holder in self.targets:
            for name, schedule in holder.schedules().items():
                trainer.log(f"weight_schedule of {name}: {schedule.describe()}")

    def before_step(self, trainer):
        if not self.targets:
            return
        ipe = max(int(getattr(trainer, "iters_per_epoch", 0) or 1), 1)
        total_epochs = int(math.ceil(trainer.max_iters / ipe))
        for holder in self.targets:
            holder.set_step(trainer.iter, trainer.iter // ipe, trainer.max_iters, total_epochs)

    def weights(self):
        out = OrderedDict()
        for holder in self.targets:
            out.update(holder.current_weights(scheduled_only=True))
        return out


class CheckpointHook(Hook):
    """`iter_N/` every `save_interval` iterations and at the end; keeps the newest `keep_max`."""

    def __init__(self, save_interval, keep_max=5):
        self.save_interval, self.keep_max = int(save_interval or 0), keep_max

    def after_step(self, trainer):
        if self.save_interval > 0 and trainer.iter % self.save_interval == 0 and trainer.iter != trainer.max_iters:
            self.save(trainer)

    def after_train(self, trainer):
        if trainer.iter > trainer.start_iter or not trainer.has_checkpoint(trainer.iter):
            self.save(trainer)

    def save(self, trainer):
        """`iter_N` now (every rank calls it; rank 0 writes), then the oldest beyond keep_max go."""
        path = trainer.save_checkpoint()
        if env.is_main_process():
            prune_checkpoints(trainer.save_dir, self.keep_max)
        return path


class EvalHook(Hook):
    """Evaluate every `eval_interval` iterations and at the end; keep `best_model/` by the task's metric."""

    def __init__(self, eval_interval):
        self.eval_interval = int(eval_interval or 0)

    def after_step(self, trainer):
        if self.eval_interval > 0 and trainer.iter % self.eval_interval == 0 and trainer.iter != trainer.max_iters:
            trainer.evaluate_and_track_best()

    def after_train(self, trainer):
        if trainer.last_eval_iter != trainer.iter:
            trainer.evaluate_and_track_best()


class VisualDLHook(Hook):
    """Opens a VisualDL LogWriter in `save_dir/vdl` (rank 0); the trainer routes scalars to it and closes
    it when the run ends, after every hook's after_train (the final evaluation writes scalars too)."""

    def before_train(self, trainer):
        if env.is_main_process():
            from visualdl import LogWriter
            trainer.vdl_writer = LogWriter(os.path.join(trainer.save_dir, "vdl"))
