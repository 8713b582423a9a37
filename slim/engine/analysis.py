"""Parameter and multiply-accumulate counts of a model, from one forward with hooks (any input type); the memory
of one training step, measured (`--analyse` on train and distill)."""
import time

try:
    import resource  # Unix: peak RSS, the CPU fallback when Paddle has no allocator statistics
except ImportError:  # pragma: no cover
    resource = None

import paddle
import paddle.nn as nn

from slim.distill.adaptor import unwrap
from slim.distill.layers import forward_with_hooks


def count_parameters(model):
    params = list(unwrap(model).parameters())
    total = sum(int(p.size) for p in params)
    trainable = sum(int(p.size) for p in params if not p.stop_gradient)
    return total, trainable


def count_macs(model, *inputs, **kwargs):
    """Multiply-accumulates of the convolutions and linear layers in one eval-mode forward."""
    model = unwrap(model)
    total = [0]
    handles = []

    def conv_hook(layer, inp, out):
        weight = layer.weight  # (out_c, in_c / groups, *kernel): each output element costs in_c/groups*kernel
        total[0] += int(out.size) * int(weight.size) // int(weight.shape[0])

    def linear_hook(layer, inp, out):
        total[0] += int(out.size) * int(layer.weight.shape[0])

    for layer in model.sublayers():
        if isinstance(layer, (nn.Conv2D, nn.Conv1D)):
            handles.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_post_hook(linear_hook))
    forward_with_hooks(model, handles, *inputs, **kwargs)
    return total[0]


def describe_model(name, model, inputs=None, kwargs=None):
    total, trainable = count_parameters(model)
    text = f"{name}: {type(unwrap(model)).__name__}, {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable)"
    if inputs is not None:
        try:
            macs = count_macs(model, *inputs, **(kwargs or {}))
            text += f", {macs / 1e9:.2f} GMACs per forward of the example input"
        except Exception as e:  # counting is informative only; never stop training for it
            text += f" (MACs not counted: {type(e).__name__})"
    return text


# ----- memory of one training step ---------------------------------------------------------------------
MiB = 1024.0 ** 2


def _on_gpu():
    return paddle.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu")


def _host_stats():
    """Paddle's own count of the bytes its CPU allocator has handed out (current, peak), if this build has it."""
    from paddle.base import core
    names = ("host_memory_stat_current_value", "host_memory_stat_peak_value", "host_memory_stat_reset_peak_value")
    return core if all(hasattr(core, n) for n in names) else None


class MemoryMeter:
    """Bytes allocated now and at the peak since reset(), on the current device:

    GPU   paddle.device.cuda.memory_allocated / max_memory_allocated (reset_max_memory_allocated);
    CPU   Paddle's host allocator statistics (core.host_memory_stat_*_value("Allocated")): every tensor Paddle
          allocates on the CPU, not numpy arrays nor the private buffers of libraries (oneDNN, BLAS);
          without them, the growth of the process's peak RSS (ru_maxrss): a lower bound (0 when the process
          had already been larger), and no current value.
    `name` says which (None: nothing to measure with)."""

    def __init__(self):
        self.kind, self.name = None, None
        if _on_gpu():
            self.kind, self.name = "cuda", "paddle.device.cuda.max_memory_allocated"
        elif paddle.device.get_device() == "cpu":
            if _host_stats() is not None:
                self.kind, self.name = "host", "Paddle's CPU allocator statistics (host_memory_stat 'Allocated')"
            elif resource is not None:
                self.kind, self.name = "rss", "growth of the process's peak RSS (ru_maxrss; a lower bound)"

    def current(self):
        if self.kind == "cuda":
            paddle.device.cuda.synchronize()
            return paddle.device.cuda.memory_allocated()
        if self.kind == "host":
            return _host_stats().host_memory_stat_current_value("Allocated", 0)
        return None

    def reset(self):
        if self.kind == "cuda":
            paddle.device.cuda.synchronize()
            paddle.device.cuda.reset_max_memory_allocated()
        elif self.kind == "host":
            _host_stats().host_memory_stat_reset_peak_value("Allocated", 0)

    def peak(self):
        if self.kind == "cuda":
            paddle.device.cuda.synchronize()
            return paddle.device.cuda.max_memory_allocated()
        if self.kind == "host":
            return _host_stats().host_memory_stat_peak_value("Allocated", 0)
        if self.kind == "rss":
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return None


def measure_step(forward, backward=None, meter=None):
    """Run `backward(forward())` (or forward() alone) once and measure it, in bytes above what was allocated
    before: {"kept": held when forward() returned (the activations kept for backward, outputs and losses;
    None where the meter has no current value), "peak": the most held at any moment of the step, "seconds": its
    wall time}, or None when nothing can be measured on this device."""
    meter = meter or MemoryMeter()
    if meter.kind is None:
        out = forward()
        if backward is not None:
            backward(out)
        return None
    start = time.perf_counter()
    before = meter.current()
    if before is None:  # RSS: only the peak, relative to the earlier peak
        before = meter.peak()
    meter.reset()
    out = forward()
    now = meter.current()
    kept = None if now is None else max(0, now - before)
    if backward is not None:
        backward(out)
    del out
    peak = meter.peak()  # on a GPU it synchronises: the time below includes the step's kernels
    return {"kept": kept, "peak": max(0, peak - before), "seconds": time.perf_counter() - start}


def _backward(loss_terms):
    terms = list(loss_terms.values()) if isinstance(loss_terms, dict) else list(loss_terms)
    paddle.add_n(terms).backward()


class _Untouched:
    """Put back what a measuring step changes: random states, BN statistics (and any other non-trainable
    tensor), train/eval modes, gradients. The optimizer never steps, so the weights stay: training then
    goes on exactly as it would without the analysis (same weights at every checkpoint)."""

    def __init__(self, layers, params, frozen=()):
        from . import env
        self.env, self.params = env, list(params)
        self.layers = [l for l in layers if l is not None]  # what trains: their non-trainable state is kept
        self.frozen = [l for l in frozen if l is not None]  # run in eval mode only: just their modes

    def __enter__(self):
        self.rng = self.env.rng_state()
        # BN running statistics are parameters (stop_gradient) in Paddle, not buffers: keep every such tensor
        self.saved = [(t, t.clone()) for layer in self.layers for t in layer.state_dict().values()
                      if t.stop_gradient and t._is_initialized()]
        self.modes = [(l, l.training) for layer in self.layers + self.frozen for l in [layer, *layer.sublayers()]]
        return self

    def __exit__(self, *exc):
        for p in self.params:
            p.clear_gradient(False)  # release: the first real step creates them afresh, as without analysis
        with paddle.no_grad():
            for t, saved in self.saved:
                paddle.assign(saved, output=t)
        for layer, training in self.modes:
            layer.training = training
        self.env.set_rng_state(self.rng)
        return False


def step_memory(trainer, batch):
    """Memory of one step on `batch`, measured (measure_step) after an unmeasured warm-up step, so above the
    weights and the gradients, for what the run trains: a list of (name, {"kept", "peak"}) with `student`
    (a training step without distillation: forward, task loss, backward) and, with a teacher, `teacher`
    (its eval forward under no_grad, as the distiller runs it) and `distillation` (the distiller's step:
    student and teacher forward, task and distillation losses, backward); and the meter. Nothing of the run
    changes (_Untouched). Under several processes every process must call it: the backward all-reduces
    gradients as in training."""
    task, distiller = trainer.task, trainer.distiller
    teachers = trainer.teacher_source.models() if trainer.teacher_source is not None else []
    args, kwargs = task.model_inputs(batch, "train")
    student, model = unwrap(trainer.student), trainer.model
    extra = distiller.named_extra_parameters() if distiller is not None else []
    params = [p for p in student.parameters() if not p.stop_gradient] + [p for _, p in extra]
    layers = [student] + ([distiller.connectors, distiller.loss_layers] if distiller is not None else [])

    def student_forward():
        model.train()
        return trainer.task_loss(model(*args, **kwargs), batch)

    def teacher_forward(teacher):
        def forward():
            teacher.eval()
            with paddle.no_grad():
                return teacher(*args, **kwargs)
        return forward

    def distill_forward():
        distiller.train()
        out = distiller(*args, label=task.distill_label(batch), **kwargs)
        terms = dict(trainer.task_loss(out.student_out, batch))
        terms.update(out.losses)
        return terms

    steps = [("student", student_forward, _backward)]
    for name, teacher in teachers:
        steps.append(("teacher" if len(teachers) == 1 else f"teacher {name}", teacher_forward(teacher), None))
    if distiller is not None:
        steps.append(("distillation", distill_forward, _backward))
    meter, results = MemoryMeter(), []
    with _Untouched(layers, params, frozen=[t for _, t in teachers]):
        # A warm-up step, not measured, makes what stays allocated in training: gradients, DataParallel's
        # buffers, kernels' caches. Each measured step then starts as a step of training does.
        warm_forward = distill_forward if distiller is not None else student_forward
        _backward(warm_forward())
        for name, forward, backward in steps:
            for p in params:
                p.clear_gradient(True)  # zeroed, still allocated (as the optimizer's clear_grad leaves them)
            results.append((name, measure_step(forward, backward, meter)))
    return results, meter


def example_batch(stream, batch_size):
    """A training batch of the run's size: the first samples of the data, with epoch 0's augmentation."""
    n = len(stream.dataset)
    return stream.collate_fn([stream.dataset[(0, i % n)] for i in range(batch_size)])


STEP_LABELS = {"student": "student training step", "teacher": "teacher forward (no grad)",
               "distillation": "distillation step"}


def describe_step_memory(trainer, batch_size):
    """One log line: step_memory() on a batch of the run's size, in MiB, and how it was measured."""
    from . import env
    try:
        state = env.rng_state()  # drawing samples re-seeds numpy and random (SeededDataset)
        try:
            batch = example_batch(trainer.stream, batch_size)
        finally:
            env.set_rng_state(state)
        results, meter = step_memory(trainer, batch)
    except Exception as e:  # informative only; never stop training for it
        return f"step memory not measured ({type(e).__name__}: {e})"
    if meter.kind is None:
        return f"step memory not measured: no memory statistics on {paddle.device.get_device()}"
    parts = []
    for name, used in results:
        kept = "" if used["kept"] is None or name.startswith("teacher") else f"activations {used['kept'] / MiB:.1f}, "
        label = STEP_LABELS.get(name) or f"{STEP_LABELS['teacher']} of {name[len('teacher '):]}"
        parts.append(f"{label}: {kept}peak {used['peak'] / MiB:.1f}")
    grads = sum(int(p.size) * p.element_size() for p in unwrap(trainer.student).parameters() if not p.stop_gradient)
    return (f"step memory, batch {batch_size} per process, MiB allocated above the weights and gradients "
            f"({meter.name}; activations: held at the end of the forward, for the backward; peak: the most at "
            f"any moment of the step): " + "; ".join(parts) + f" (student gradients: {grads / MiB:.1f})")
