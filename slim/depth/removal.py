"""Progressive layer removal (MixFormerV2's deep-to-shallow stage): blocks fade into identities while the model trains.

Each block to remove computes `y = x + a * (block(x) - x)` = `a * block(x) + (1 - a) * x`; for a residual
block `x + f(x)` that is `x + a * f(x)`, its residual branch scaled by `a`. The factor decays by cosine
from 1 at iteration 0 to 0 at iteration `remove_iters` and stays 0 afterwards:

    a(k) = (1 + cos(pi * k / remove_iters)) / 2      for k < remove_iters, else 0

where k is the number of iterations done (the step computed while `trainer.iter == k` uses a(k); an
evaluation after it uses a(k + 1)). At a = 0 a removed block returns its input itself, without running,
so the model is exactly the shallower one and can be cut (blocks.cut_state_dict).

    removal = ProgressiveRemoval(model, {"backbone.block3": [1, 3]}, remove_iters=200)
    trainer = Trainer(..., hooks=[RemovalScheduleHook(removal)])   # a follows trainer.iter

The blocks' own forward is wrapped (not replaced in the model), so state-dict keys, forward hooks on
the blocks (layer pairs, `list_layers`) and checkpoints are those of the plain model.
"""
import math

import paddle

from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError
from slim.distill.layers import forward_with_hooks
from slim.engine.hooks import Hook
from .blocks import check_removal, find_block_list, kept_indices


def blend_factor(iteration, remove_iters):
    """The cosine schedule a(k): 1 at k = 0, 0 from k = remove_iters on."""
    n = int(remove_iters)
    k = int(iteration)
    if n <= 0 or k >= n:
        return 0.0
    if k <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * k / n))


class ProgressiveRemoval:
    """Wraps the forward of every block to remove; `factor()` is the current a."""

    def __init__(self, model, removal, remove_iters):
        self.model = unwrap(model)
        self.removal = check_removal(self.model, removal)
        self.remove_iters = int(remove_iters)
        if self.remove_iters < 0:
            raise ConfigError(f"remove_iters must be >= 0, got {remove_iters}")
        self._iteration = 0
        self._clock = None
        self._forced = None
        self._wrapped = []
        for name, indices in self.removal.items():
            blocks = find_block_list(self.model, name)
            for i in indices:
                self._wrap(blocks[i], f"{name}.{i}")

    # ----- the schedule -----------------------------------------------------------------------------
    def set_iter(self, iteration):
        """Fix the iteration the factor is computed from (tools, tests)."""
        self._clock, self._iteration = None, int(iteration)

    def follow(self, clock):
        """Read the iteration from `clock()` at every forward (e.g. `lambda: trainer.iter`)."""
        self._clock = clock

    @property
    def iteration(self):
        return int(self._clock()) if self._clock is not None else self._iteration

    def factor(self):
        if self._forced is not None:
            return self._forced
        return blend_factor(self.iteration, self.remove_iters)

    def kept(self):
        return {name: kept_indices(ix, len(find_block_list(self.model, name))) for name, ix in self.removal.items()}

    def describe(self):
        parts = [f"{name} blocks {ix} of {len(find_block_list(self.model, name))}" for name, ix in self.removal.items()]
        return (f"removing {'; '.join(parts)}: residual branches scaled by a = (1 + cos(pi k / "
                f"{self.remove_iters})) / 2, identities from iteration {self.remove_iters} on")

    # ----- the blocks -------------------------------------------------------------------------------
    def _wrap(self, block, name):
        original = block.forward
        removal = self

        def forward(*args, **kwargs):
            a = removal.factor()
            if a >= 1.0:
                return original(*args, **kwargs)
            if not args or not isinstance(args[0], paddle.Tensor):
                raise ConfigError(f"Block {name} ({type(block).__name__}) does not take a tensor as its first "
                                  f"argument, so it cannot be blended into an identity.")
            x = args[0]
            if a <= 0.0 and not (paddle.is_grad_enabled() and paddle.distributed.get_world_size() > 1):
                return x  # exactly the input; the block does not even run
            y = original(*args, **kwargs)
            if not isinstance(y, paddle.Tensor) or list(y.shape) != list(x.shape):
                got = list(y.shape) if isinstance(y, paddle.Tensor) else type(y).__name__
                raise ConfigError(f"Block {name} ({type(block).__name__}) maps {list(x.shape)} to {got}: only a "
                                  f"block whose output has its input's shape can become an identity. Remove "
                                  f"other blocks (e.g. not the first, downsampling block of a stage).")
            if a <= 0.0:  # several processes: keep the block in the graph (zero gradients, not missing ones)
                return x + 0.0 * (y - x)
            return x + a * (y - x)

        block.forward = forward
        self._wrapped.append(block)

    def check_shapes(self, *inputs, **kwargs):
        """One forward in eval mode at a = 0.5: raises when a removed block changes its input's shape."""
        self._forced = 0.5
        try:
            forward_with_hooks(self.model, (), *inputs, **kwargs)
        finally:
            self._forced = None

    def remove(self):
        """Give the blocks back their own forward."""
        for block in self._wrapped:
            if "forward" in block.__dict__:
                del block.forward
        self._wrapped = []


class RemovalScheduleHook(Hook):
    """Ties the removal factor to the trainer's iteration; logs it (record.txt, history.jsonl) while it
    decays, and once when it reaches 0."""

    def __init__(self, removal):
        self.removal = removal
        self.every = 10

    def before_train(self, trainer):
        self.every = trainer.options.log_iters or 10
        self.removal.follow(lambda: trainer.iter)
        trainer.log(self.removal.describe())
        trainer.log(f"remove factor a = {self.removal.factor():.4f} at iteration {trainer.iter}")

    def after_step(self, trainer):
        a, k = self.removal.factor(), trainer.iter
        if k == self.removal.remove_iters:
            trainer.log(f"remove factor a = 0 at iteration {k}: the removed blocks are identities")
        elif k % self.every == 0 and a > 0:
            trainer.log(f"remove factor a = {a:.4f} at iteration {k}")
        if k % self.every == 0 or k == self.removal.remove_iters or k == trainer.max_iters:
            trainer.record_scalars({"Train/remove_factor": a}, k)


def layer_pairs(student_blocks, student_indices, teacher_blocks, teacher_indices, loss=None, weight=1.0,
                align=None, where="distill_layers"):
    """`distill_layers_student` / `distill_layers_teacher` index pairs -> `distill:` pair dicts comparing
    the outputs of block `s` of the student's list and block `t` of the teacher's (L2 by default)."""
    student_indices, teacher_indices = list(student_indices or []), list(teacher_indices or [])
    if len(student_indices) != len(teacher_indices):
        raise ConfigError(f"{where}: distill_layers_student has {len(student_indices)} indices and "
                          f"distill_layers_teacher {len(teacher_indices)}; give one teacher index per student index.")
    pairs = []
    for s, t in zip(student_indices, teacher_indices):
        for i in (s, t):
            if isinstance(i, bool) or not isinstance(i, int):
                raise ConfigError(f"{where}: layer indices must be integers, got {i!r}")
        pair = {"name": f"layer_s{s}_t{t}", "student": f"{student_blocks}.{s}", "teacher": f"{teacher_blocks}.{t}",
                "loss": dict(loss or {"type": "L2Loss"}), "weight": float(weight)}
        if align:
            pair["align"] = align
        pairs.append(pair)
    return pairs


def check_layer_indices(model, blocks, indices, role, where="distill_layers"):
    count = len(find_block_list(model, blocks))
    bad = [i for i in indices if not 0 <= int(i) < count]
    if bad:
        raise ConfigError(f"{where}_{role}: index {bad[0]} is out of range for the {role}'s block list "
                          f"{blocks!r}, which has {count} blocks: valid indices are 0..{count - 1}.")
