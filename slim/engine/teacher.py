"""The teacher of a run, behind one door: the trainer asks it for each step's student output and
distillation terms, whether the teacher runs live, is read from a teacher-output cache or runs inside the
model.

    teacher = make_teacher(task, model, teacher, pairs, adaptors, cache=CacheOptions(...) or None)
    teacher.prepare(setup)                      # once, after the model is wrapped, before the optimizer
    student_out, terms = teacher.forward(args, kwargs, label, keys)    # every step: one path
    teacher.close(log)

    StudentAlone     no teacher (tools/train.py), or a model that runs its own (PaddleClas's mutual learning,
                     a DistillationModel without a cache): the model's forward, no distillation terms
    LiveTeacher      separate frozen teacher(s) run through the Distiller every step, built before training
    CachedTeacher    the same teachers' tensors read from a teacher-output cache (teacher_cache.py), one cache
                     per teacher; a teacher is built, and runs, only for missing or damaged entries
    InModelTeacher   a DistillationModel's frozen models (task.inner_teacher) served from a cache: the model's
                     forward takes their stored tensors instead of running them

Several teachers: `teacher` is {name: model or TeacherSource} (`-t A.yml -t B.yml`, or `teachers:` in the
student config); each may have its own precision; pairs name theirs or combine them (slim/distill/ensemble.py).
With a cache each teacher has its own folder (`DIR/<name>/`, fingerprinted with that teacher's weights),
so changing one teacher refills only its entries; with one teacher the cache is DIR itself.
"""
import os
from collections import OrderedDict

import paddle

from slim.distill import Distiller
from slim.distill.adaptor import unwrap
from slim.distill.errors import ConfigError, SlimError
from slim.distill.precision import float32
from . import env
from .amp import Precision, decorate_for_o2
from .analysis import describe_model
from .teacher_cache import TeacherCache, layer_parts, part


class TeacherSource:
    """A teacher that is built on first need: `build(log)` makes the frozen model with its weights, `parts`
    its fingerprint for a teacher-output cache ("teacher weights", "teacher model"), `model` it once built;
    `precision` ('fp32', 'fp16', 'bf16' or None: the run's) runs it in its own precision."""

    def __init__(self, build, parts, model=None, precision=None):
        self.build, self.parts, self.model, self.precision = build, OrderedDict(parts), model, precision


class CacheOptions:
    """--teacher_cache DIR and its flags (teacher_cache.py)."""

    def __init__(self, root, dtype="float16", topk=None, rebuild=False, repair=False):
        self.root, self.dtype, self.topk, self.rebuild, self.repair = root, dtype or "float16", topk, rebuild, repair


class Setup:
    """What preparing a teacher needs from the run's set-up."""

    def __init__(self, task, cfg, log, precision, train_set, batch_size, world, data_seed, example, stream):
        self.task, self.cfg, self.log, self.precision = task, cfg, log, precision
        self.train_set, self.batch_size, self.world, self.data_seed = train_set, batch_size, world, data_seed
        # a cache's rows per epoch and whether they are places in mixed batches (BatchStream.cache_keys)
        self.cache_rows, self.mixed_batches = stream.cache_rows, stream.mixes_batches
        self.example = example  # a collated batch of one sample (None for tasks without collate)
        self.args, self.kwargs = task.model_inputs(example, "train") if example is not None else ((), {})


def teacher_sources(teacher):
    """OrderedDict name -> TeacherSource of a Trainer's `teacher` argument (None, a model, a TeacherSource or
    a dict of them; one teacher is named `teacher`)."""
    if teacher is None:
        return OrderedDict()
    items = teacher.items() if isinstance(teacher, dict) else [("teacher", teacher)]
    out = OrderedDict()
    for name, t in items:
        out[str(name)] = t if isinstance(t, TeacherSource) else TeacherSource(None, {}, model=t)
    return out


# ----- the interface --------------------------------------------------------------------------------------
class StudentAlone:
    """The interface, and the run without a separate teacher: the model's forward, no distillation terms."""

    distiller = None

    def __init__(self, model):
        self.model = model

    def build_now(self, log, precision):
        """Build the teachers that must exist before the model is wrapped for several processes (none here)."""

    def models(self):
        """[(name, frozen model)] of the teachers built so far (what the logs and --analyse describe)."""
        return []

    def prepare(self, setup):
        """Once, before the optimizer exists: whatever the step needs (the distiller, its connectors, caches)."""

    def forward(self, args, kwargs, label=None, keys=None, step=0):
        """(student output, OrderedDict of weighted distillation terms) of one training step; `keys`: the
        batch's samples as (epoch, index), `step`: the iterations done before it."""
        return self.model(*args, **kwargs), OrderedDict()

    def named_parameters(self):
        """What trains beside the student (connectors, losses with parameters)."""
        return []

    def state_dict(self):
        return None

    def set_state_dict(self, state, path):
        pass

    def train(self):
        self.model.train()

    def plan(self, visits, log):
        """Before the first step (after a resume): `visits` {epoch: samples read} over all processes."""

    def close(self, log):
        pass


class LiveTeacher(StudentAlone):
    """Separate frozen teacher(s) and the Distiller: every step runs the teachers (built before training)."""

    def __init__(self, model, sources, pairs, adaptors):
        super().__init__(model)
        self.sources, self.pairs, self.adaptors = sources, pairs, adaptors
        self.precision = Precision("fp32")
        self.log = print

    def build_now(self, log, precision):
        self.log, self.precision = log, precision
        for name in self.sources:
            self._build(name)

    def _build(self, name):
        """Build one teacher of a TeacherSource, leaving every random state as it was (a run reading the
        teacher's outputs from a cache builds none and must draw the same numbers)."""
        source = self.sources[name]
        if source.model is None:
            state = env.rng_state()
            try:
                source.model = source.build(self.log)
            finally:
                env.set_rng_state(state)
        return source.model

    def _late_build(self, name):
        model = self._build(name)
        decorate_for_o2(self._teacher_precision(name), model)  # built after set-up cast the models (O2)
        return model

    def _teacher_precision(self, name):
        wanted = self.sources[name].precision
        return self.precision if not wanted else Precision(wanted, self.precision.requested_level)

    def models(self):
        return [(n, s.model) for n, s in self.sources.items() if s.model is not None]

    def prepare(self, setup):
        self.log, self.precision = setup.log, setup.precision
        models = OrderedDict((n, s.model) for n, s in self.sources.items())
        factories = {n: (lambda n=n: self._late_build(n)) for n in self.sources}
        contexts = {n: (lambda n=n: _teacher_autocast(self._teacher_precision(n)))
                    for n, s in self.sources.items() if s.precision}
        # finiteness is checked by the trainer at log steps (no host sync per step)
        self.distiller = Distiller(self.model, models, self.pairs, *self.adaptors, check_finite=False,
                                   teacher_factory=factories, teacher_context=contexts)
        self._build_connectors(setup, self.example_features(setup))
        several = len(self.sources) > 1
        for pair in self.distiller.pairs:
            whose = ""
            if several:
                whose = (f", teachers {' + '.join(pair.teachers)} ({pair.ensemble})" if len(pair.teachers) > 1
                         else f", teacher {pair.teachers[0]}")
            self.log(f"distill {pair.describe()}, weight {pair.weight}{whose}")
        for name, source in self.sources.items():
            if source.precision:
                self.log(f"teacher {name}, its own {self._teacher_precision(name).describe()}")

    def example_features(self, setup):
        """Teacher tensors of the example batch when the distiller needs them and no teacher is built."""
        return None

    def _build_connectors(self, setup, features):
        if setup.example is not None:
            self.distiller.build(*setup.args, label=setup.task.distill_label(setup.example),
                                 teacher_features=features, **setup.kwargs)

    def forward(self, args, kwargs, label=None, keys=None, step=0, teacher_features=None):
        out = self.distiller(*args, label=label, teacher_features=teacher_features, **kwargs)
        return out.student_out, out.losses

    def named_parameters(self):
        return self.distiller.named_extra_parameters()

    def state_dict(self):
        return self.distiller.connector_state_dict()

    def set_state_dict(self, state, path):
        if state:
            self.distiller.set_connector_state_dict(state)

    def train(self):
        self.distiller.train()

    def ensure_built(self):
        """Every teacher built (e.g. for --analyse, which measures the teacher's forward)."""
        self.distiller.ensure_teacher()

    def close(self, log):
        if self.distiller is not None:
            self.distiller.close()


def _teacher_autocast(precision):
    """The context a teacher with its own precision runs in: its autocast, or autocast off for fp32."""
    if precision.enabled:
        return precision.autocast()
    return paddle.amp.auto_cast(enable=False)


# ----- teacher tensors from caches --------------------------------------------------------------------------
class _Caches:
    """One TeacherCache per teacher group (a teacher, or a frozen model of a DistillationModel): read what is
    cached, compute and store the rest with `compute(args, kwargs, groups)`."""

    def __init__(self, options, groups, compute, ensure, log):
        self.options, self.groups, self.compute, self.ensure, self.log = options, groups, compute, ensure, log
        self.caches = OrderedDict()

    def open(self, setup, parts_of, names_of):
        """Open (or start) each group's cache; returns True when every cache already knows its layout."""
        known = True
        for group in self.groups:
            root = self.options.root if len(self.groups) == 1 else os.path.join(self.options.root, group)
            parts = OrderedDict(parts_of(group))
            parts.update(_data_parts(setup, names_of(group)))
            cache = TeacherCache(root, parts, self.options.dtype, self.options.topk, self.options.rebuild,
                                 log=self.log)
            self.caches[group] = cache
            if cache.open(setup.cache_rows):
                self.log(f"teacher cache {root}: its fingerprint matches this run; cached entries are read and the "
                         f"teacher runs only for the others")
                if self.options.repair and env.is_main_process():
                    cache.repair()  # damaged entries marked missing: this run's teacher refills them
            else:
                known = False
        env.barrier()
        return known

    def create_missing(self, setup):
        """Caches that are new learn their layout from the teacher's tensors on the example batch."""
        new = [g for g, c in self.caches.items() if c.layout is None]
        if not new:
            return
        if setup.example is None:
            raise ConfigError("--teacher_cache needs a collated example batch to size its entries.")
        with setup.precision.autocast():
            feats = self.compute(setup.args, setup.kwargs, new)
        for group in new:
            cache = self.caches[group]
            cache.create(cache.tensor_layout(_host_arrays(_select(feats, self.groups[group]))))
            self.log(f"teacher cache {cache.root}: new, for {', '.join(cache.layout)}")

    def first_features(self):
        """Stored tensors of one sample of every cache (to size connectors), or None."""
        feats = OrderedDict()
        for cache in self.caches.values():
            arrays = cache.first_entry()
            if arrays is None:
                return None
            feats.update(_device_tensors(arrays))
        return feats

    def features(self, args, kwargs, keys, step):
        """The teacher tensors of this batch: read, or computed by the teacher, stored and read back (the run
        that fills the cache trains on what later runs will read: float16, top-k)."""
        feats, missing = OrderedDict(), []
        for group, cache in self.caches.items():
            arrays = cache.lookup(keys)
            if arrays is None:
                missing.append(group)
            else:
                feats.update(_device_tensors(arrays))
        if missing:
            self._ensure(missing, step)
            computed = self.compute(args, kwargs, missing)
            for group in missing:
                cache = self.caches[group]
                cache.store(keys, _host_arrays(_select(computed, self.groups[group])))
                feats.update(_device_tensors(cache.lookup(keys, count=False)))
        return feats

    def _ensure(self, groups, step):
        try:
            built = self.ensure(groups)
        except (SlimError, OSError) as e:
            damage = [c.last_damage for c in self.caches.values() if c.last_damage]
            if not damage:
                raise
            raise ConfigError(
                f"Damaged teacher-cache entries ({'; '.join(damage)}) must be recomputed by the teacher, which "
                f"cannot be built here ({e}). Refill the cache where the teacher's weights are "
                f"(--teacher_cache_rebuild), or copy it again and check the copy with `slim-cache verify "
                f"{self.options.root}`.") from None
        if built and (step > 0 or any(c.read_samples for c in self.caches.values())):
            self.log(f"teacher cache: entries missing from iteration {step + 1}: building the teacher to compute "
                     f"and store them")

    def plan(self, visits):
        for cache in self.caches.values():
            cache.plan(visits)

    def close(self, log):
        for cache in self.caches.values():
            damaged = cache.damaged_samples
            log(f"teacher cache {cache.root}: {cache.read_samples} sample(s) read, {cache.written_samples} computed "
                f"by the teacher and written" + (f" ({damaged} of them had failed their checksum)" if damaged else ""))
            cache.close()


def _data_parts(setup, names):
    """The fingerprint components of the training data and layout (what decides every entry, beside the
    teacher's own)."""
    from .data import sample_files
    files = []
    for i in range(len(setup.train_set)):
        for f in sample_files(setup.train_set, i):
            files.append([f, os.path.getsize(f) if os.path.isfile(f) else None])
    parts = OrderedDict()
    parts["training data"] = part(f"{len(setup.train_set)} samples, their files and the train data config",
                                  {"config": setup.task.data_config(setup.cfg), "files": files,
                                   "samples": len(setup.train_set)})
    parts["data seed"] = part(f"--data_seed {setup.data_seed}")
    parts["batches"] = part(f"{setup.batch_size} samples per process x {setup.world} process(es)")
    if setup.mixed_batches:
        parts["entries"] = part(f"one per place in an epoch's batches ({setup.cache_rows}): each batch is mixed")
    parts["teacher tensors"] = part(", ".join(names))
    parts["teacher precision"] = part(f"{setup.precision.name} {setup.precision.level}")
    return parts


def _select(feats, names):
    return OrderedDict((n, feats[n]) for n in names)


def _host_arrays(feats):
    out = OrderedDict()
    for name, t in feats.items():
        if t.dtype not in (paddle.float16, paddle.float32):
            t = t.astype("float32")
        out[name] = t.numpy()
    return out


def _device_tensors(arrays):
    """The stored arrays as float32 tensors on the device (float16 entries are cast there, after the copy)."""
    return OrderedDict((n, float32(paddle.to_tensor(a))) for n, a in arrays.items())


class CachedTeacher(LiveTeacher):
    """LiveTeacher whose teachers' tensors come from a teacher-output cache per teacher."""

    def __init__(self, model, sources, pairs, adaptors, options):
        super().__init__(model, sources, pairs, adaptors)
        self.options = options
        self.cache = None

    def build_now(self, log, precision):
        self.log, self.precision = log, precision  # built on first need only

    def example_features(self, setup):
        names = self.distiller.teacher_names
        groups = OrderedDict((n, self.distiller.teacher_tensor_names([n])) for n in names)
        self.cache = _Caches(self.options, groups, self._compute, self._ensure, setup.log)
        known = self.cache.open(setup, self._parts, lambda g: groups[g])
        self.cache.create_missing(setup)
        if not known or self.distiller.teacher_built or not self.distiller.needs_build:
            return None
        return self.cache.first_features()

    def _parts(self, name):
        source = self.sources[name]
        if source.parts:
            return source.parts
        return layer_parts(source.model)

    def _compute(self, args, kwargs, names):
        return self.distiller.teacher_features(*args, teachers=names, **kwargs)

    def _ensure(self, names):
        unbuilt = [n for n in names if self.sources[n].model is None]
        self.distiller.ensure_teacher(names)
        return bool(unbuilt)

    def forward(self, args, kwargs, label=None, keys=None, step=0, teacher_features=None):
        # a schedule that set every distillation weight to 0 stops the teacher and its cache too
        feats = self.cache.features(args, kwargs, keys, step) if self.distiller.teacher_needed else None
        return super().forward(args, kwargs, label, keys, step, teacher_features=feats)

    def plan(self, visits, log):
        self.cache.plan(visits)

    def close(self, log):
        super().close(log)
        if self.cache is not None:
            self.cache.close(log)


class InModelTeacher(StudentAlone):
    """A model that runs its frozen teachers itself (task.inner_teacher: PaddleClas's DistillationModel),
    their tensors served from a teacher-output cache: its forward takes them instead of running them."""

    def __init__(self, model, runner, options):
        super().__init__(model)
        self.runner, self.options = runner, options
        self.cache = None

    def prepare(self, setup):
        groups = _groups_of(self.runner.teacher_tensor_names())
        self.cache = _Caches(self.options, groups, self._compute, lambda names: False, setup.log)
        self.cache.open(setup, self._parts, lambda g: groups[g])
        self.cache.create_missing(setup)

    def _parts(self, group):
        parts_of = getattr(self.runner, "teacher_parts_of", None)
        return parts_of(group) if parts_of is not None and group is not None else self.runner.teacher_parts()

    def _compute(self, args, kwargs, groups):
        return self.runner.teacher_features(*args, **kwargs)

    def forward(self, args, kwargs, label=None, keys=None, step=0):
        feats = self.cache.features(args, kwargs, keys, step)
        return self.model(*args, teacher_features=feats, **kwargs), OrderedDict()

    def plan(self, visits, log):
        self.cache.plan(visits)

    def close(self, log):
        if self.cache is not None:
            self.cache.close(log)


def _groups_of(names):
    """Tensor names `<model>/<tensor>` (or `<model>`) grouped by model: one cache each (one group: all)."""
    groups = OrderedDict()
    for name in names:
        groups.setdefault(name.split("/")[0], []).append(name)
    return groups if len(groups) > 1 else OrderedDict([(None, list(names))])


def make_teacher(task, model, teacher, pairs=(), adaptors=(None, None), cache=None):
    """The teacher of a run, from the Trainer's `teacher` argument (see the module docstring)."""
    sources = teacher_sources(teacher)
    if sources:
        if cache is not None:
            return CachedTeacher(model, sources, list(pairs), adaptors, cache)
        return LiveTeacher(model, sources, list(pairs), adaptors)
    if pairs:
        raise ConfigError("Distillation pairs were given but no teacher: pass a teacher config.")
    if cache is not None:
        # a model that runs its frozen teacher itself (the task's inner_teacher) reads the cached tensors
        runner = task.inner_teacher(unwrap(model))
        if runner is None:
            raise ConfigError("--teacher_cache stores a frozen teacher's outputs, but this run has no frozen "
                              "teacher: give a teacher config (-t), or drop --teacher_cache.")
        return InModelTeacher(model, runner, cache)
    return StudentAlone(model)


def describe_teachers(teacher, log, args, kwargs):
    """A log line per teacher built before training (its parameters and cost on the example)."""
    models = teacher.models()
    for name, model in models:
        log(describe_model("teacher" if len(models) == 1 and name == "teacher" else f"teacher {name}", model, args,
                           kwargs))
