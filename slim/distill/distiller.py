"""The distiller: a trainable student, a frozen teacher, and named loss terms between their tensors.

    distiller = Distiller(student, teacher, prepare_distill_config(), StudentAdaptor, TeacherAdaptor)
    distiller.build(images)                      # materialises connectors whose channels are inferred
    optimizer = paddle.optimizer.Momentum(parameters=distiller.parameters(), ...)
    out = distiller(images, label=labels)        # out.student_out, out.teacher_out, out.losses, out.loss
    (task_loss(out.student_out, labels) + out.loss).backward()

The teacher is put in eval mode, its parameters get `stop_gradient=True` and it runs under
`paddle.no_grad()`: it receives no gradient and keeps no activations for backward.

Mixed precision: called under `paddle.amp.auto_cast`, the student, the teacher and the connectors run in
the low precision; the compared tensors are cast to float32 and the losses computed with autocast off
(slim/distill/precision.py), so every loss term is a float32 value. The student may be
wrapped in `paddle.DataParallel`; connectors are then synchronised the same way.

Teacher tensors from elsewhere (a teacher-output cache): `teacher_features(*inputs)` runs the teacher alone
and returns the tensors the pairs compare, by name (`teacher_tensor_names()`: one per distinct teacher
source, before connectors); `distiller(*inputs, teacher_features=those)` then skips the teacher. With
`teacher=None` and a `teacher_factory`, the teacher is built on first use only (`ensure_teacher()`).

A loss with trainable parameters of its own (e.g. MGD's generator) trains with the student, like a
connector: its parameters are in `parameters()` / `named_extra_parameters()` (`loss_layers.<pair>.<name>`)
and its state is saved and restored with the connectors' (`connector_state_dict()`).

Weights that change over training (a pair's `weight_schedule`, weight_schedule.py): `set_step(iteration, epoch,
total_iters, total_epochs)` before a step sets each pair's weight for it (the trainer's LossWeightHook calls it);
`current_weights()` gives them. A term whose weight is 0 is not computed, and while every weight is 0 the teacher
does not run (`teacher_needed` is False): the step is the student's alone.

Several teachers: `Distiller(student, {"r50": t1, "r101": t2}, pairs)`. Each pair compares the tensors of
the teacher it names (`teacher_name: r101`, or `teacher: r101.backbone.bb_3_2`), or of all of them
combined (`ensemble: mean_prob | mean_logit`) or one term per teacher (`ensemble: per_teacher`; see
ensemble.py). Their tensors are named `<teacher>/<tensor>` (`teacher_tensor_names()`); each teacher is
built by its own factory and may run in its own context (`teacher_context`: e.g. its precision).
"""
import contextlib
from collections import OrderedDict

import paddle

from .adaptor import AdaptorBase, FeatureRecorder, LayerRef, find_sublayer, unwrap
from .connectors import ConnectorSet, build_connector, connector_key, match_spatial
from .ensemble import combine
from .errors import ConfigError, LayerNotFoundError, NonFiniteLossError, ShapeMismatchError
from .losses import build_loss
from .pairs import AdaptorKey, parse_pairs, source_name
from .precision import float32, float32_losses
from .tokens import convert_pair, shape_hint


class DistillOutput:
    """What one distiller call returns."""

    def __init__(self, student_out, teacher_out, losses, loss, student_features, teacher_features):
        self.student_out = student_out
        self.teacher_out = teacher_out
        self.losses = losses  # OrderedDict: pair name -> weighted 0-D tensor
        self.loss = loss  # their sum (0-D tensor; 0.0 when there is no pair)
        self.student_features = student_features  # pair name -> tensors the loss compared
        self.teacher_features = teacher_features


def freeze_teacher(teacher):
    teacher.eval()
    for param in teacher.parameters():
        param.stop_gradient = True
    return teacher


def _make_adaptor(adaptor, model):
    if adaptor is None or isinstance(adaptor, AdaptorBase):
        return adaptor
    if isinstance(adaptor, type) and issubclass(adaptor, AdaptorBase):
        return adaptor(unwrap(model))
    raise ConfigError(f"An adaptor must be an AdaptorBase subclass or instance, got {adaptor!r}")


def _has_sublayer(model, name):
    try:
        find_sublayer(model, name)
        return True
    except LayerNotFoundError:
        return False


def _resolve(source, adaptor, layer_map, model):
    """A pair's source -> a LayerRef to hook, or an AdaptorKey for a tensor stored during forward."""
    if isinstance(source, LayerRef):
        return source
    key = source.key if isinstance(source, AdaptorKey) else source
    if adaptor is not None and key in layer_map:
        return layer_map[key]
    if isinstance(source, AdaptorKey):
        if adaptor is None:
            raise ConfigError(f"Feature {key!r} comes from an adaptor's mapping_layers(), but no adaptor was "
                              f"given; pass StudentAdaptor and TeacherAdaptor to Distiller.")
        return source
    if adaptor is not None and not _has_sublayer(model, key) and not key.startswith("$"):
        try:
            return AdaptorKey(key)
        except ConfigError:
            pass
    return LayerRef(key)


class _Side:
    """Student or teacher: the model, its adaptor, and the hooks that capture its tensors."""

    def __init__(self, role, model, adaptor, sources):
        self.role, self.model = role, model
        self.adaptor = _make_adaptor(adaptor, model)
        layer_map = self.adaptor.layer_mapping() if self.adaptor is not None else {}
        self.resolved = {id(s): _resolve(s, self.adaptor, layer_map, model) for s in sources}
        refs = [r for r in self.resolved.values() if isinstance(r, LayerRef)]
        self.needs_stored_tensors = any(isinstance(r, AdaptorKey) for r in self.resolved.values())
        self.recorder = FeatureRecorder(model, refs)
        self.stored = {}

    def forward(self, inputs, kwargs):
        self.recorder.clear()
        output = self.model(*inputs, **kwargs)
        self.stored = self.adaptor.stored_tensors() if self.needs_stored_tensors else {}
        self.output = output
        return output

    def feature(self, source, pair=None):
        ref = self.resolved[id(source)]
        if isinstance(ref, LayerRef):
            try:
                return self.recorder.get(ref, self.output)
            except ConfigError as e:  # e.g. a layer that did not run: say which pair names it
                if pair is None:
                    raise
                raise type(e)(f"Distill pair {pair!r} ({self.role} side): {e}") from None
        if ref.key not in self.stored:
            name = type(self.adaptor).__name__
            raise ConfigError(
                f"{name}.mapping_layers() has no entry {ref.key!r} for the {self.role}: it is neither a "
                f"sublayer name (before forward) nor a tensor added under `if self.add_tensor:` "
                f"(after forward; found {sorted(self.stored) or 'none'}).")
        return self.stored[ref.key]


def _teacher_dicts(teacher, factory):
    """({name: model or None}, {name: factory}) from one teacher (a model and/or a factory) or dicts of several."""
    if isinstance(teacher, dict) or isinstance(factory, dict):
        models, factories = OrderedDict(teacher or {}), dict(factory or {})
        for name in factories:
            models.setdefault(name, None)
    else:
        models, factories = OrderedDict(teacher=teacher), ({"teacher": factory} if factory is not None else {})
    if not models or any(m is None and n not in factories for n, m in models.items()):
        raise ConfigError("Distiller needs a teacher model (or a teacher_factory that builds it).")
    return models, factories


def _strip_teacher_prefix(pair, names):
    """(teacher sources without a `<teacher>.` prefix, that teacher's name or None)."""
    stripped, prefixes = [], []
    for source in pair.teacher:
        layer = source if isinstance(source, str) else getattr(source, "layer", None)
        head, _, rest = (layer or "").partition(".")
        if rest and head in names:
            prefixes.append(head)
            source = rest if isinstance(source, str) else LayerRef(rest, source.io, source.idx, source.call)
        else:
            prefixes.append(None)
        stripped.append(source)
    if len(set(prefixes)) > 1:
        raise ConfigError(f"{pair.describe()}: the teacher sources of one pair must come from one teacher; give each "
                          f"the same `<teacher>.` prefix (found {prefixes}).")
    return tuple(stripped), prefixes[0]


class Distiller:
    """Student + frozen teacher(s) + distillation pairs -> named, weighted loss terms.

    `distill_config` is any spelling `parse_pairs` accepts: the yaml `distill:` list, the tutorial's
    `prepare_distill_config()` list (with the adaptors), a PaddleSlim `DistillConfig` list, or a path.
    """

    def __init__(self, student, teacher, distill_config, StudentAdaptor=None, TeacherAdaptor=None,
                 check_finite=True, teacher_factory=None, teacher_context=None):
        self.student = student
        self._models, self._factories = _teacher_dicts(teacher, teacher_factory)
        self.teacher_names = list(self._models)
        self._teacher_adaptor = TeacherAdaptor
        self._contexts = dict(teacher_context or {})
        self.pairs = self._route(parse_pairs(distill_config))
        # the weight of each pair at the current step (set_step); the configured weight until a step is set
        self._weights = OrderedDict((p.name, p.weight) for p in self.pairs)
        # each pair's teacher tensors by teacher and by name (computed once: the step only looks them up)
        self._tensor_names = {p.name: {t: [self.tensor_name(t, s) for s in p.teacher] for t in p.teachers}
                              for p in self.pairs}
        self.loss_fns = [build_loss(p.loss) for p in self.pairs]
        # losses with trainable parameters: trained, saved and synchronised like connectors
        self.loss_layers = paddle.nn.LayerDict()
        for index, (pair, loss_fn) in enumerate(zip(self.pairs, self.loss_fns)):
            if isinstance(loss_fn, paddle.nn.Layer) and any(not p.stop_gradient for p in loss_fn.parameters()):
                self.loss_layers[connector_key(index)] = loss_fn
        self._loss_runners = {}
        for pair, loss_fn in zip(self.pairs, self.loss_fns):
            arity = getattr(loss_fn, "pair_arity", 1)
            if len(pair.student) != arity or len(pair.teacher) != arity:
                raise ConfigError(f"{pair.describe()}: {pair.loss['type']} compares {arity} tensor(s) per side, "
                                  f"got {len(pair.student)} student and {len(pair.teacher)} teacher.")
        self._student = _Side("student", student, StudentAdaptor,
                              [s for p in self.pairs for s in p.student])
        self._sides = OrderedDict()  # teacher name -> _Side, once that teacher is built
        for name, model in self._models.items():
            if model is not None:
                self._add_teacher_side(name, model)
        self.connectors = ConnectorSet()
        self._connector_runner = self.connectors
        self._needs_build = False
        for index, pair in enumerate(self.pairs):
            if not pair.align or pair.align["type"] == "resize":
                continue
            if pair.align.get("in_channels") and pair.align.get("out_channels"):
                for j in range(len(pair.student)):  # channels given: no example batch needed
                    self.connectors.add(f"{connector_key(index)}_{j}",
                                        build_connector(pair.align, None, None, pair))
            else:
                self._needs_build = True
        if not self._needs_build:
            self._wrap_connectors_for_data_parallel()
        self.check_finite = check_finite
        # with record_inputs, each call keeps every pair's tensors as captured (before connectors, resizing or
        # casts) in last_inputs: pair name -> (student tensors, teacher tensors); for inspection (--check)
        self.record_inputs, self.last_inputs = False, {}

    # ----- weights over training (weight_schedule.py) ----------------------------------------------------
    @property
    def has_schedules(self):
        return any(p.schedule is not None for p in self.pairs)

    def set_step(self, iteration, epoch=0, total_iters=None, total_epochs=None):
        """Set each pair's weight for the step after `iteration` iterations (in epoch `epoch`); None: the
        configured weights again."""
        for pair in self.pairs:
            factor = 1.0
            if iteration is not None and pair.schedule is not None:
                factor = pair.schedule.factor(iteration, epoch, total_iters, total_epochs)
            self._weights[pair.name] = pair.weight * factor

    def schedules(self):
        """OrderedDict pair name -> its WeightSchedule, for the scheduled pairs."""
        return OrderedDict((p.name, p.schedule) for p in self.pairs if p.schedule is not None)

    def current_weights(self, scheduled_only=False):
        """OrderedDict pair name -> its weight at the current step (only the scheduled pairs' when asked)."""
        return OrderedDict((p.name, self._weights[p.name]) for p in self.pairs
                           if not scheduled_only or p.schedule is not None)

    @property
    def teacher_needed(self):
        """False while every pair's weight is 0 (a schedule stopped distillation): the teacher is not run."""
        return not self.pairs or any(w != 0 for w in self._weights.values())

    # ----- teachers -------------------------------------------------------------------------------
    def _route(self, pairs):
        """Each pair with the teachers whose tensors it compares (`pair.teachers`); per_teacher expanded."""
        names, multi = self.teacher_names, len(self.teacher_names) > 1
        routed = []
        for pair in pairs:
            sources, prefix = _strip_teacher_prefix(pair, names) if multi else (pair.teacher, None)
            if pair.teacher_name and prefix and pair.teacher_name != prefix:
                raise ConfigError(f"{pair.describe()}: teacher_name {pair.teacher_name!r} and the teacher source's "
                                  f"prefix {prefix!r} name two teachers; give one.")
            chosen = pair.teacher_name or prefix
            if chosen is not None and chosen not in names and (multi or chosen != "teacher"):
                raise ConfigError(f"{pair.describe()}: teacher {chosen!r} is not one of this run's teachers "
                                  f"({', '.join(names)}).")
            if not multi:
                routed.append(pair.for_teachers(names))
            elif chosen:
                routed.append(pair.for_teachers([chosen], teacher=sources))
            elif pair.ensemble == "per_teacher":
                routed += [pair.for_teachers([n], name=f"{pair.name}_{n}") for n in names]
            elif pair.ensemble:
                routed.append(pair.for_teachers(names))
            else:
                raise ConfigError(
                    f"{pair.describe()}: this run has {len(names)} teachers ({', '.join(names)}): name the one it "
                    f"compares with (`teacher_name: {names[0]}`, or `teacher: {names[0]}.LAYER`), or combine them "
                    f"with `ensemble: mean_prob | mean_logit | per_teacher`.")
        return routed

    def tensor_name(self, teacher, source):
        """The name of a teacher tensor (a cache key): `<teacher>/<tensor>` when there are several teachers."""
        name = source_name(source)
        return f"{teacher}/{name}" if len(self.teacher_names) > 1 else name

    def _add_teacher_side(self, name, model):
        sources = [s for p in self.pairs if name in p.teachers for s in p.teacher]
        role = "teacher" if len(self.teacher_names) == 1 else f"teacher {name!r}"
        self._models[name] = freeze_teacher(model)
        self._sides[name] = _Side(role, model, self._teacher_adaptor, sources)

    @property
    def teacher(self):
        """The teacher model (None until built), or {name: model} when there are several."""
        if len(self._models) == 1:
            return next(iter(self._models.values()))
        return OrderedDict(self._models)

    @property
    def needs_build(self):
        """Connectors still have to infer their channels from a first batch (see build())."""
        return self._needs_build

    @property
    def teacher_built(self):
        return len(self._sides) == len(self._models)

    def ensure_teacher(self, names=None):
        """Build the teachers (`names`, default all) whose factories have not run yet; returns `teacher`."""
        for name in (self.teacher_names if names is None else names):
            if name not in self._sides:
                factory = self._factories.get(name)
                if factory is None:
                    raise ConfigError(f"Teacher {name!r} has neither a model nor a factory that builds it.")
                self._add_teacher_side(name, factory())
        return self.teacher

    def teacher_tensor_names(self, teachers=None):
        """The distinct teacher tensors the pairs compare (of `teachers`, default all), by name, in pair order."""
        return list(OrderedDict.fromkeys(n for p in self.pairs for t, names in self._tensor_names[p.name].items()
                                         if teachers is None or t in teachers for n in names))

    def teacher_features(self, *inputs, teachers=None, **kwargs):
        """Run the teachers (`teachers`, default all) alone (no_grad) -> OrderedDict name -> tensor of every
        teacher tensor the pairs compare, as captured (before connectors, resizing, ensembles or casts)."""
        names = self.teacher_names if teachers is None else list(teachers)
        self.ensure_teacher(names)
        with paddle.no_grad():
            for name in names:
                with self._contexts.get(name, contextlib.nullcontext)():
                    self._sides[name].forward(inputs, kwargs)
        feats = OrderedDict()
        for pair in self.pairs:
            for teacher, tensor_names in self._tensor_names[pair.name].items():
                if teacher not in names:
                    continue
                for source, name in zip(pair.teacher, tensor_names):
                    if name not in feats:
                        feats[name] = self._sides[teacher].feature(source, pair.name)
        return feats

    def _teacher_output(self):
        """The teacher's output of the step, or {name: output} of several teachers."""
        if len(self._models) == 1:
            return getattr(next(iter(self._sides.values())), "output", None)
        return OrderedDict((n, getattr(side, "output", None)) for n, side in self._sides.items())

    def _pair_teacher_tensors(self, pair, feats):
        """The teacher tensors a pair's loss compares: one teacher's, or every teacher's combined."""
        per_teacher = [[feats[n] for n in names] for names in self._tensor_names[pair.name].values()]
        if len(per_teacher) == 1:
            return list(per_teacher[0])
        axis = pair.loss.get("axis", 1)
        return [combine([tensors[j] for tensors in per_teacher], pair.ensemble, axis=axis)
                for j in range(len(pair.teacher))]

    # ----- parameters and state -------------------------------------------------------------------
    def parameters(self):
        """Everything the optimizer trains: the student's parameters and the connectors'."""
        if self._needs_build:
            raise ConfigError("Connectors infer their channels from the first batch: call "
                              "distiller.build(example_inputs) before creating the optimizer, or give "
                              "in_channels and out_channels in each `align`.")
        return list(self.student.parameters()) + [p for _, p in self.named_extra_parameters()]

    def named_extra_parameters(self):
        """(name, parameter) of what trains beside the student: connectors (`connectors.*`) and the
        trainable parameters of losses (`loss_layers.<pair>.*`)."""
        named = [(f"connectors.{n}", p) for n, p in self.connectors.named_parameters()]
        named += [(f"loss_layers.{n}", p) for n, p in self.loss_layers.named_parameters() if not p.stop_gradient]
        return named

    def connector_state_dict(self):
        """The connectors' state and that of losses with trainable parameters (`loss_layers.` keys)."""
        state = self.connectors.state_dict()
        state.update((f"loss_layers.{k}", v) for k, v in self.loss_layers.state_dict().items())
        return state

    def set_connector_state_dict(self, state):
        if self._needs_build and state:
            raise ConfigError("Call distiller.build(example_inputs) before loading connector weights.")
        state = dict(state or {})
        losses = {k[len("loss_layers."):]: state.pop(k) for k in list(state) if k.startswith("loss_layers.")}
        own = self.loss_layers.state_dict()
        if set(losses) != set(own):
            raise ConfigError(f"The weights of the trainable losses do not match this distill config (missing "
                              f"{sorted(set(own) - set(losses))}, unexpected {sorted(set(losses) - set(own))}); "
                              f"the checkpoint was made with other pairs.")
        if losses:
            self.loss_layers.set_state_dict(losses)
        missing, unexpected = self.connectors.set_state_dict(state)
        if missing or unexpected:
            raise ConfigError(f"Connector weights do not match this distill config (missing {missing}, "
                              f"unexpected {unexpected}); the checkpoint was made with other pairs.")

    def train(self):
        self.student.train()
        self.connectors.train()
        self.loss_layers.train()
        for model in self._models.values():
            if model is not None:
                model.eval()

    def eval(self):
        self.student.eval()
        self.connectors.eval()
        self.loss_layers.eval()

    def build(self, *inputs, teacher_inputs=None, teacher_features=None, **kwargs):
        """Run one forward without gradients or BN updates to create connectors of inferred width."""
        if not self._needs_build:
            return self
        training = self.student.training
        self.student.eval()
        try:
            with paddle.no_grad():
                self(*inputs, teacher_inputs=teacher_inputs, teacher_features=teacher_features, _check=False,
                     **kwargs)
        finally:
            if training:
                self.student.train()
        return self

    def close(self):
        """Remove every hook this distiller put on the student and the teacher."""
        self._student.recorder.remove()
        for side in self._sides.values():
            side.recorder.remove()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----- the step ---------------------------------------------------------------------------------
    def __call__(self, *inputs, label=None, teacher_inputs=None, teacher_features=None, _check=True, **kwargs):
        student_out = self._student.forward(inputs, kwargs)
        teacher_out = None
        if not self.teacher_needed and not self._needs_build:  # every weight is 0: the student alone
            zeros = OrderedDict((p.name, paddle.zeros([], dtype="float32")) for p in self.pairs)
            return DistillOutput(student_out, None, zeros, paddle.zeros([], dtype="float32"), {}, {})
        if teacher_features is None:
            teacher_features = self.teacher_features(*(inputs if teacher_inputs is None else teacher_inputs),
                                                     **kwargs)
            teacher_out = self._teacher_output()
        s_feats = {p.name: [self._student.feature(s, p.name) for s in p.student] for p in self.pairs}
        try:
            t_feats = {p.name: self._pair_teacher_tensors(p, teacher_features) for p in self.pairs}
        except KeyError as e:
            raise ConfigError(f"teacher_features has no tensor {e.args[0]!r}; give every name of "
                              f"teacher_tensor_names() ({self.teacher_tensor_names()}).") from None
        if self.record_inputs:
            self.last_inputs = {p.name: (list(s_feats[p.name]), list(t_feats[p.name])) for p in self.pairs}
        self._apply_connectors(s_feats, t_feats)
        losses = OrderedDict()
        with float32_losses():  # under autocast: losses in fp32 (a float16 softmax overflows)
            for pair, loss_fn in zip(self.pairs, self.loss_fns):
                weight = self._weights[pair.name]
                if weight == 0:  # scheduled off for this step: not computed
                    losses[pair.name] = paddle.zeros([], dtype="float32")
                    continue
                s, t = self._align_spatial(pair, loss_fn, s_feats[pair.name], t_feats[pair.name])
                # where features reach the losses: float16/bfloat16 tensors become float32 (no-op in fp32)
                s, t = float32(s), float32(t)
                s_feats[pair.name], t_feats[pair.name] = s, t
                if getattr(loss_fn, "pair_arity", 1) == 1:
                    s, t = s[0], t[0]
                extra = {"label": label} if getattr(loss_fn, "uses_label", False) else {}
                losses[pair.name] = weight * self._loss_runners.get(id(loss_fn), loss_fn)(s, t, **extra)
            total = paddle.add_n(list(losses.values())) if losses else paddle.zeros([])
        out = DistillOutput(student_out, teacher_out, losses, total, s_feats, t_feats)
        if _check and self.check_finite and losses and not bool(paddle.isfinite(total)):
            raise NonFiniteLossError(self._explain_non_finite(out))
        return out

    def _apply_connectors(self, s_feats, t_feats):
        todo = {}
        for index, pair in enumerate(self.pairs):
            if pair.align:  # tokens <-> maps first (no weights; tokens.py): connectors see the converted tensors
                s_feats[pair.name], t_feats[pair.name] = convert_pair(pair, s_feats[pair.name], t_feats[pair.name])
            if not pair.align or pair.align["type"] == "resize":
                continue
            for j, (s, t) in enumerate(zip(s_feats[pair.name], t_feats[pair.name])):
                key = f"{connector_key(index)}_{j}"
                if key not in self.connectors:
                    self.connectors.add(key, build_connector(pair.align, s, t, pair))
                self.connectors.layers[key].check_input(s, pair)
                todo[key] = (pair.name, j, s)
        if self._needs_build:
            self._needs_build = False
            self._wrap_connectors_for_data_parallel()
        if todo:
            mapped = self._connector_runner({k: v[2] for k, v in todo.items()})
            for key, (name, j, _) in todo.items():
                s_feats[name][j] = mapped[key]

    def _wrap_connectors_for_data_parallel(self):
        """Under several processes, gradients of the connectors are averaged like the student's."""
        if paddle.distributed.get_world_size() > 1 and len(self.connectors.parameters()) > 0:
            self._connector_runner = paddle.DataParallel(self.connectors)
        if paddle.distributed.get_world_size() > 1:
            for loss_fn in self.loss_layers.values():
                self._loss_runners[id(loss_fn)] = paddle.DataParallel(loss_fn)

    def _align_spatial(self, pair, loss_fn, students, teachers):
        students, teachers = list(students), list(teachers)
        for j, (s, t) in enumerate(zip(students, teachers)):
            students[j], teachers[j] = match_spatial(s, t, pair.align)
            if getattr(loss_fn, "same_shape", True):
                self._check_shapes(pair, students[j], teachers[j])
        return students, teachers

    @staticmethod
    def _check_shapes(pair, s, t):
        if list(s.shape) == list(t.shape):
            return
        fixes = [shape_hint(s, t)] if shape_hint(s, t) else []
        if s.ndim == t.ndim and s.ndim == 3 and s.shape[1] == t.shape[1] and s.shape[2] != t.shape[2]:
            fixes.append("add `align: {type: linear}` (a trainable projection of the token width)")
        elif s.ndim == t.ndim and s.ndim >= 2 and s.shape[1] != t.shape[1] and s.ndim != 3:
            fixes.append("add `align: {type: 1x1conv}` (a trainable connector from student to teacher channels)"
                         if s.ndim == 4 else "add `align: {type: linear}` (a trainable projection)")
        if s.ndim == t.ndim == 4 and s.shape[2:] != t.shape[2:]:
            fixes.append("add `align: {resize: student}` (or teacher) to resize one side bilinearly")
        fix = "; ".join(fixes) or "pick tensors of equal shape"
        raise ShapeMismatchError(
            f"{pair.describe()}: student shape {list(s.shape)} and teacher shape {list(t.shape)} differ. "
            f"To fix it, {fix}.")

    def _explain_non_finite(self, out):
        for pair in self.pairs:
            term = out.losses[pair.name]
            if bool(paddle.isfinite(term)):
                continue
            value = float(term)
            for side, feats in (("student", out.student_features), ("teacher", out.teacher_features)):
                bad = [j for j, f in enumerate(feats[pair.name]) if not bool(paddle.isfinite(f).all())]
                if bad:
                    return (f"Distillation loss of {pair.describe()} is {value}: the {side} tensor contains "
                            f"NaN or Inf values, so the {side} model itself diverged or got bad input. Lower "
                            f"the learning rate, check the data, or resume from the last good checkpoint.")
            return (f"Distillation loss of {pair.describe()} is {value} although both inputs are finite: the "
                    f"loss overflowed. Lower its weight or temperature, or add a connector with BN "
                    f"(`align: {{type: 1x1conv, bn: true}}`) to bring the scales together.")
        return "The distillation loss is not finite."
