"""PaddleClas's `Loss.Train` entries, computed on the model output `{model name: logits or dict}`.

    Loss:
      Train:
        - DistillationGTCELoss: {weight: 1.0, model_names: [Student]}
        - DistillationDKDLoss: {weight: 1.0, model_name_pairs: [[Student, Teacher]], temperature: 1, alpha: 1, beta: 1}

Each entry returns named terms, multiplied by its `weight` and logged under PaddleClas's names
(`CELoss_Student`, `loss_dkd_Student_Teacher`, ...). `key` picks an intermediate output of each model (its
`return_patterns`, or any layer named by a key: it is captured for the loss), `logits` the logits. What each
computes, with z the logits, p = softmax, N the batch and y the ground-truth class:

| loss | term names | value |
| --- | --- | --- |
| CELoss (one model) | CELoss | -mean log p(z)_y; `epsilon`: label smoothing (1-eps) onehot + eps/C |
| DistillationGTCELoss | CELoss_<m> | the same for each model of `model_names` |
| DistillationCELoss | CELoss_<s>_<t> | -mean sum_k p(z_t)_k log p(z_s)_k (soft labels, no temperature) |
| DistillationKLDivLoss | loss_kldiv_<s>_<t> | T^2 KL(p(z_t/T) \\|\\| p(z_s/T)) summed over classes, / N (T default 4) |
| DistillationDMLLoss | DMLLoss_<s>_<t>_<i> | (kl(s, t) + kl(t, s)) / 2, kl(x, y) = y log((y+1e-12)/(x+1e-12)) * C, mean over N*C (`act`: softmax, sigmoid or null; `sum_across_class_dim`: sum over classes, mean over N) |
| DistillationDKDLoss | loss_dkd_<s>_<t> | (alpha TCKD + beta NCKD) T^2, mean over N, target = y (teacher's argmax with `use_target_as_gt`) |
| DistillationDISTLoss | loss_dist_<s>_<t> | beta (1 - mean_rows pearson) + gamma (1 - mean_columns pearson) of p(z_s), p(z_t): PaddleClas has no temperature; `tau: T` gives the paper's T^2 (...) on p(z/T) |
| DistillationWSLLoss | wsl_loss_<s>_<t> | T^2 mean_n (1 - exp(-max(ce_s/(ce_t+1e-7), 0))) * (-sum p(z_t/T) log p(z_s/T)); ce from detached logits and y |
| DistillationSKDLoss | skd_loss_<s>_<t> | z -> layer_norm(z) * multiplier; alpha T^2 soft CE at T + (1 - alpha) CE(y) |
| DistillationRKDLoss | loss_angle_<i>_<s>_<t>, loss_dist_<i>_<s>_<t> | RKD angle and distance (PaddleClas's: pairwise distances sqrt(max(d^2, 1e-12)), normalised by their mean over all N^2 entries; smooth L1, mean), on `student_keepkeys`/`teacher_keepkeys` outputs, avg-pooled to `target_size` when given |
| DistillationDistanceLoss | loss_<mode>_loss_<mode>_<i> | mean l1, l2 (MSE) or smooth_l1 (Huber, delta 1) on `key` outputs, after `act` |
| DistillationPairLoss, base_loss_name MGDLoss | <name>_<i>_<s>_<t> | alpha_mgd * mean((G(align(f_s) * M) - f_t)^2); M drops whole channels with probability lambda_mgd (PaddleClas's classification MGD); align (1x1 conv) and G (conv3x3-ReLU-conv3x3) train with the student |

Pair losses take both models' outputs as they are: in mutual learning both receive gradients; a frozen
model's outputs carry none.

Any entry may add `weight_schedule:` (slim/distill/weight_schedule.py), e.g. to stop distilling after 20 epochs:

    - DistillationKLDivLoss: {weight: 1.0, model_name_pairs: [[Student, Teacher]],
                              weight_schedule: {type: constant, stop: 20, by: epoch}}
"""
import math
from collections import OrderedDict

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from slim.distill.ensemble import combine
from slim.distill.errors import ConfigError
from slim.distill.losses._utils import smooth_l1
from slim.distill.losses.correlation import DISTLoss
from slim.distill.losses.kd import DKDLoss, KLLoss
from slim.distill.pairs import ENSEMBLES
from slim.distill.weight_schedule import build_schedule

NO_IGNORE = -100  # classification labels are never ignored (255 is a class of ImageNet)


def _logits(x):
    return x["logits"] if isinstance(x, dict) else x


def is_soft(label, logits):
    """Targets mixed by batch_transform_ops (batch_ops.py): float (N, C) rows as wide as the logits, which
    PaddleClas's CELoss reads as soft labels; class ids are (N,) or (N, 1)."""
    return label.ndim == 2 and label.shape[-1] == logits.shape[-1] and label.dtype in (paddle.float16, paddle.float32,
                                                                                      paddle.float64)


def _label(label):
    if label.ndim == 2 and label.shape[-1] > 1:
        raise ConfigError("A loss that reads each sample's class got mixed (soft) targets from batch_transform_ops "
                          "(Mixup, Cutmix): set its use_target_as_gt: True (the teacher's class), or remove "
                          "batch_transform_ops.")
    return label.reshape([-1]).astype("int64")


def soft_cross_entropy(student, teacher):
    """PaddleClas's DistillationCELoss: CE of the student against softmax(teacher), no temperature, as its CELoss
    computes it (paddle's soft-label cross_entropy)."""
    return F.cross_entropy(student, F.softmax(teacher, axis=-1), soft_label=True)


def cross_entropy(logits, label, epsilon=None):
    """-mean log softmax(z)_y; with epsilon, against (1 - eps) onehot + eps / C (PaddleClas's label_smooth).
    Soft targets (N, C) as PaddleClas's CELoss reads them: (1 - eps) target + eps / C with epsilon; without it,
    softmax(target) (PaddleClas applies a softmax to a soft label there: a mixed one-hot becomes nearly uniform
    over many classes; PaddleClas issue #2468). Computed with the ops PaddleClas's CELoss uses, in its order: the
    same float32 result, which its training (chaotic in its first steps) needs to follow the same path."""
    smooth = epsilon is not None and 0 < float(epsilon) < 1
    if is_soft(label, logits):
        target = label.astype(logits.dtype)
        if not smooth:
            return soft_cross_entropy(logits, target)
    else:
        label = _label(label)
        if not smooth:
            return F.cross_entropy(logits, label)
        target = F.one_hot(label, logits.shape[-1])
    target = F.label_smooth(target, epsilon=float(epsilon))
    return paddle.sum(-F.log_softmax(logits, axis=-1) * target, axis=-1).mean()


class PaddleClasLoss(nn.Layer):
    """One `Loss.Train` entry. Subclasses set `default_name` and implement terms(predicts, label)."""
    default_name = "loss"
    pair_loss = True  # reads model_name_pairs
    ground_truth = False  # True: a loss on the labels alone (the task's term, not a distillation term)
    schedule = None  # weight_schedule (set by build_loss_entry): the weight of a step is weight x factor
    factor = 1.0  # the schedule's factor at the current step (CombinedLoss.set_step)
    origin = None  # where its weight is configured, e.g. Loss.Train.1.DistillationKLDivLoss.weight

    def __init__(self, weight=1.0, model_name_pairs=None, model_names=None, key=None, name=None):
        super().__init__()
        self.weight = float(weight)
        self.key = key
        self.name = name or self.default_name
        self.model_name_pairs = [list(p) for p in (model_name_pairs or [])]
        self.model_names = list(model_names or [])
        for p in self.model_name_pairs:
            if len(p) != 2:
                raise ConfigError(f"{type(self).__name__}: model_name_pairs entries are [student, teacher], got {p}")

    # the sub-models' outputs (and keys) this loss reads, for checking and capturing
    def used_models(self):
        return sorted({m for p in self.model_name_pairs for m in p} | set(self.model_names))

    def keys_needed(self):
        """{model name: [intermediate outputs it reads]} (logits excluded)."""
        if self.key in (None, "logits"):
            return {}
        return {m: [self.key] for m in self.used_models()}

    def pick(self, predicts, model, key="__default__"):
        key = self.key if key == "__default__" else key
        if model not in predicts:
            raise ConfigError(f"{type(self).__name__} names the model {model!r}, but Arch.models has "
                              f"{', '.join(predicts)}.")
        out = predicts[model]
        if key is None or (key == "logits" and not isinstance(out, dict)):
            return _logits(out)
        if not isinstance(out, dict) or key not in out:
            raise ConfigError(f"{type(self).__name__}: model {model} has no output {key!r}")
        return out[key]

    def forward(self, predicts, label):
        weight = self.weight * self.factor
        names = getattr(self, "_names", None)
        if weight == 0 and names is not None:  # scheduled off for this step: its terms are 0, not computed
            return OrderedDict((k, paddle.zeros([], dtype="float32")) for k in names)
        terms = self.terms(predicts, label)
        self._names = list(terms)
        return OrderedDict((k, v * weight) for k, v in terms.items())


class CELoss(PaddleClasLoss):
    """CE with the labels on the (single) model's logits; on a DistillationModel, on infer_model_name's."""
    pair_loss = False
    ground_truth = True

    def __init__(self, weight=1.0, epsilon=None, reduction="mean"):
        super().__init__(weight)
        if reduction != "mean":
            raise ConfigError("CELoss: only reduction: mean is supported")
        self.epsilon = epsilon
        self.infer_model_name = None

    def used_models(self):
        return []

    def terms(self, predicts, label):
        out = predicts
        if isinstance(predicts, dict) and "logits" not in predicts:
            name = self.infer_model_name if self.infer_model_name in predicts else next(iter(predicts))
            out = predicts[name]
        return {"CELoss": cross_entropy(_logits(out), label, self.epsilon)}


class DistillationGTCELoss(PaddleClasLoss):
    default_name = "loss_gt_ce"
    ground_truth = True

    def __init__(self, weight=1.0, model_names=(), epsilon=None, key=None, name=None):
        super().__init__(weight, model_names=model_names, key=key, name=name)
        if not self.model_names:
            raise ConfigError("DistillationGTCELoss needs model_names, e.g. [Student] (the models trained on the "
                              "labels)")
        self.epsilon = epsilon

    def terms(self, predicts, label):
        return OrderedDict((f"CELoss_{m}", cross_entropy(self.pick(predicts, m), label, self.epsilon))
                           for m in self.model_names)


class _PairLoss(PaddleClasLoss):
    def __init__(self, weight=1.0, model_name_pairs=(), key=None, name=None):
        super().__init__(weight, model_name_pairs=model_name_pairs, key=key, name=name)
        if not self.model_name_pairs:
            raise ConfigError(f"{type(self).__name__} needs model_name_pairs, e.g. [[Student, Teacher]]")

    ensemble = None  # several teachers of one student combined into one term (build_loss_entry)

    def terms(self, predicts, label):
        out = OrderedDict()
        if self.ensemble in ("mean_prob", "mean_logit"):  # [[S, T1], [S, T2]] -> one term on T1 and T2 combined
            students = OrderedDict()
            for a, b in self.model_name_pairs:
                students.setdefault(a, []).append(b)
            for idx, (a, teachers) in enumerate(students.items()):
                t = combine([self.pick(predicts, b) for b in teachers], self.ensemble, axis=-1)
                out.update(self.pair_terms(idx, a, "+".join(teachers), self.pick(predicts, a), t, label))
            return out
        for idx, (a, b) in enumerate(self.model_name_pairs):
            out.update(self.pair_terms(idx, a, b, self.pick(predicts, a), self.pick(predicts, b), label))
        return out


class DistillationCELoss(_PairLoss):
    """Soft-label CE against softmax of the second model's logits (slim's DistillCrossEntropyLoss at T = 1, computed
    with PaddleClas's ops)."""
    default_name = "loss_ce"

    def __init__(self, weight=1.0, model_name_pairs=(), epsilon=None, key=None, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        if epsilon is not None:
            raise ConfigError("DistillationCELoss: epsilon (label smoothing) applies to ground-truth labels; use it "
                              "in DistillationGTCELoss and remove it here.")

    def pair_terms(self, idx, a, b, s, t, label):
        return {f"CELoss_{a}_{b}": soft_cross_entropy(s, t)}


class DistillationKLDivLoss(_PairLoss):
    """T^2 KL(p_t || p_s) summed over classes, / N (slim's KLLoss)."""
    default_name = "loss_kl"

    def __init__(self, weight=1.0, model_name_pairs=(), temperature=4, key=None, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        self.kl = KLLoss(temperature=float(temperature), axis=1, ignore_index=NO_IGNORE)

    def pair_terms(self, idx, a, b, s, t, label):
        return {f"loss_kldiv_{a}_{b}": self.kl(s, t)}


def dml(x, target, act="softmax", sum_across_class_dim=False, eps=1e-12):
    """PaddleClas's DMLLoss: (kl(x, t) + kl(t, x)) / 2 with kl(x, y) = y log((y + eps)/(x + eps)) * C."""
    if act == "softmax":
        x, target = F.softmax(x, axis=-1), F.softmax(target, axis=-1)
    elif act == "sigmoid":
        x, target = F.sigmoid(x), F.sigmoid(target)
    c = x.shape[-1]

    def kl(a, b):
        return b * paddle.log((b + eps) / (a + eps)) * c

    loss = (kl(x, target) + kl(target, x)) / 2
    return loss.sum(axis=1).mean() if sum_across_class_dim else loss.mean()


class DistillationDMLLoss(_PairLoss):
    default_name = "loss_dml"

    def __init__(self, weight=1.0, model_name_pairs=(), act="softmax", weight_ratio=False, sum_across_class_dim=False,
                 key=None, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        if act not in ("softmax", "sigmoid", None):
            raise ConfigError(f"DistillationDMLLoss act must be softmax, sigmoid or null, got {act!r}")
        if weight_ratio:
            raise ConfigError("DistillationDMLLoss weight_ratio (multi-label attribute data) is not supported; "
                              "remove it or set it to False.")
        self.act, self.sum_across_class_dim = act, bool(sum_across_class_dim)

    def pair_terms(self, idx, a, b, s, t, label):
        return {f"DMLLoss_{a}_{b}_{idx}": dml(s, t, self.act, self.sum_across_class_dim)}


class DistillationDKDLoss(_PairLoss):
    """slim's DKDLoss (the paper's, as PaddleClas's) with PaddleClas's defaults T = 1, alpha = 1, beta = 1."""
    default_name = "loss_dkd"

    def __init__(self, weight=1.0, model_name_pairs=(), key=None, temperature=1.0, alpha=1.0, beta=1.0,
                 use_target_as_gt=False, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        self.dkd = DKDLoss(alpha=float(alpha), beta=float(beta), temperature=float(temperature), axis=1,
                           ignore_index=NO_IGNORE)
        self.use_target_as_gt = bool(use_target_as_gt)

    def pair_terms(self, idx, a, b, s, t, label):
        target = t.argmax(axis=-1) if self.use_target_as_gt or label is None else _label(label)
        return {f"{self.name}_{a}_{b}": self.dkd(s, t, label=target)}


class DistillationDISTLoss(_PairLoss):
    """PaddleClas's DIST: no temperature (tau 1). `tau: T` is the paper's form, T^2 (beta inter + gamma intra)
    on softmax(z / T) (slim's DISTLoss)."""
    default_name = "loss_dist"

    def __init__(self, weight=1.0, model_name_pairs=(), key=None, beta=1.0, gamma=1.0, tau=None, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        self.dist = DISTLoss(tau=float(tau or 1.0), beta=float(beta), gamma=float(gamma), axis=1,
                             ignore_index=NO_IGNORE)

    def pair_terms(self, idx, a, b, s, t, label):
        return {f"{self.name}_{a}_{b}": self.dist(s, t)}


def wsl(s, t, label, temperature):
    """Weighted soft labels (Zhou et al. 2021) as PaddleClas computes it."""
    c = s.shape[-1]
    onehot = F.one_hot(_label(label), c).astype(s.dtype)
    ce_s = -(onehot * F.log_softmax(s.detach(), axis=-1)).sum(axis=1)
    ce_t = -(onehot * F.log_softmax(t.detach(), axis=-1)).sum(axis=1)
    ratio = paddle.maximum(ce_s / (ce_t + 1e-7), paddle.zeros_like(ce_s))
    kd = -(F.softmax(t / temperature, axis=-1) * F.log_softmax(s / temperature, axis=-1)).sum(axis=1)
    return temperature ** 2 * (kd * (1 - paddle.exp(-ratio))).mean()


class DistillationWSLLoss(_PairLoss):
    default_name = "wsl_loss"

    def __init__(self, weight=1.0, model_name_pairs=(), key=None, temperature=2.0, use_target_as_gt=False, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        self.temperature, self.use_target_as_gt = float(temperature), bool(use_target_as_gt)

    def pair_terms(self, idx, a, b, s, t, label):
        target = t.argmax(axis=-1) if self.use_target_as_gt or label is None else label
        return {f"{self.name}_{a}_{b}": wsl(s, t, target, self.temperature)}


def skd(s, t, label, temperature, multiplier, alpha):
    """Spherical KD (Guo et al. 2020) as PaddleClas computes it."""
    def sphere(z):
        mean = z.mean(axis=-1, keepdim=True)
        var = ((z - mean) ** 2).mean(axis=-1, keepdim=True)
        return (z - mean) / paddle.sqrt(var + 1e-7) * multiplier

    s, t = sphere(s), sphere(t)
    kd = -(F.softmax(t / temperature, axis=-1) * F.log_softmax(s / temperature, axis=-1)).sum(axis=1).mean()
    onehot = F.one_hot(_label(label), s.shape[-1]).astype(s.dtype)
    ce = (-(onehot * F.log_softmax(s, axis=-1)).sum(axis=1)).mean()
    return kd * temperature ** 2 * alpha + ce * (1 - alpha)


class DistillationSKDLoss(_PairLoss):
    default_name = "skd_loss"

    def __init__(self, weight=1.0, model_name_pairs=(), key=None, temperature=1.0, multiplier=2.0, alpha=0.9,
                 use_target_as_gt=False, name=None):
        super().__init__(weight, model_name_pairs, key, name)
        self.temperature, self.multiplier, self.alpha = float(temperature), float(multiplier), float(alpha)
        self.use_target_as_gt = bool(use_target_as_gt)

    def pair_terms(self, idx, a, b, s, t, label):
        target = t.argmax(axis=-1) if self.use_target_as_gt or label is None else label
        return {f"{self.name}_{a}_{b}": skd(s, t, target, self.temperature, self.multiplier, self.alpha)}


def _pool_flat(x, target_size):
    if target_size is not None and x.ndim == 4:
        x = F.adaptive_avg_pool2d(x, target_size)
    return x.reshape([x.shape[0], -1])


def rkd_distance(s, t, target_size=None, eps=1e-12):
    def pdist(e):
        sq = (e * e).sum(axis=1)
        d2 = sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * paddle.mm(e, e.t())
        return paddle.clip(d2, min=eps).sqrt()

    s, t = _pool_flat(s, target_size), _pool_flat(t, target_size)
    td, sd = pdist(t), pdist(s)
    td = td / (td.mean() + eps)
    sd = sd / (sd.mean() + eps)
    return smooth_l1(sd - td).mean()


def rkd_angle(s, t, target_size=None):
    def angles(e):
        diff = e.unsqueeze(0) - e.unsqueeze(1)
        unit = F.normalize(diff, p=2, axis=2)
        return paddle.bmm(unit, unit.transpose([0, 2, 1])).reshape([-1])

    s, t = _pool_flat(s, target_size), _pool_flat(t, target_size)
    return smooth_l1(angles(s) - angles(t)).mean()


class DistillationRKDLoss(PaddleClasLoss):
    default_name = "loss_rkd"

    def __init__(self, weight=1.0, target_size=None, model_name_pairs=(("Student", "Teacher"),), student_keepkeys=(),
                 teacher_keepkeys=(), name=None):
        super().__init__(weight, model_name_pairs=model_name_pairs, name=name)
        self.student_keepkeys, self.teacher_keepkeys = list(student_keepkeys), list(teacher_keepkeys)
        if len(self.student_keepkeys) != len(self.teacher_keepkeys) or not self.student_keepkeys:
            raise ConfigError("DistillationRKDLoss needs student_keepkeys and teacher_keepkeys of the same length "
                              "(the outputs compared, e.g. [logits] and [logits], or return_patterns names)")
        self.target_size = target_size

    def keys_needed(self):
        need = {}
        for a, b in self.model_name_pairs:
            need.setdefault(a, []).extend(k for k in self.student_keepkeys if k != "logits")
            need.setdefault(b, []).extend(k for k in self.teacher_keepkeys if k != "logits")
        return need

    def terms(self, predicts, label):
        out = OrderedDict()
        for a, b in self.model_name_pairs:
            for idx, (sk, tk) in enumerate(zip(self.student_keepkeys, self.teacher_keepkeys)):
                s = self.pick(predicts, a, None if sk == "logits" else sk)
                t = self.pick(predicts, b, None if tk == "logits" else tk)
                out[f"loss_angle_{idx}_{a}_{b}"] = rkd_angle(s, t, self.target_size)
                out[f"loss_dist_{idx}_{a}_{b}"] = rkd_distance(s, t, self.target_size)
        return out


class DistillationDistanceLoss(_PairLoss):
    default_name = "loss_"

    def __init__(self, weight=1.0, mode="l2", model_name_pairs=(), act=None, key=None, name=None, reduction="mean",
                 delta=1.0):
        super().__init__(weight, model_name_pairs, key, name)
        if mode not in ("l1", "l2", "smooth_l1"):
            raise ConfigError(f"DistillationDistanceLoss mode must be l1, l2 or smooth_l1, got {mode!r}")
        if act not in (None, "sigmoid", "softmax"):
            raise ConfigError(f"DistillationDistanceLoss act must be null, sigmoid or softmax, got {act!r}")
        if reduction != "mean":
            raise ConfigError("DistillationDistanceLoss: only reduction: mean is supported")
        self.mode, self.act, self.delta = mode, act, float(delta)
        self.name = (name or self.default_name) + mode

    def pair_terms(self, idx, a, b, s, t, label):
        if self.act == "sigmoid":
            s, t = F.sigmoid(s), F.sigmoid(t)
        elif self.act == "softmax":
            s, t = F.softmax(s, axis=-1), F.softmax(t, axis=-1)
        d = s - t
        if self.mode == "l1":
            value = d.abs().mean()
        elif self.mode == "l2":
            value = (d * d).mean()
        else:
            value = (self.delta * smooth_l1(d, self.delta)).mean()  # Huber (paddle smooth_l1_loss with delta)
        return {f"{self.name}_loss_{self.mode}_{idx}": value}


class MGDLoss(nn.Layer):
    """PaddleClas's classification MGD: the student's map (1x1-conv aligned, with bias, when channels differ),
    with whole channels dropped (kept where U[0,1) >= lambda_mgd, per sample and channel), goes through
    conv3x3-ReLU-conv3x3 and must rebuild the teacher's map: alpha_mgd * mean((G(.) - f_t)^2).
    Convolution weights start from Kaiming normal (fan_out, ReLU), as PaddleClas's."""

    def __init__(self, student_channels, teacher_channels, alpha_mgd=1.756, lambda_mgd=0.15):
        super().__init__()
        s, t = int(student_channels), int(teacher_channels)
        self.alpha_mgd, self.lambda_mgd = float(alpha_mgd), float(lambda_mgd)
        self.student_channels, self.teacher_channels = s, t
        self.align = nn.Conv2D(s, t, 1) if s != t else None
        self.generation = nn.Sequential(nn.Conv2D(t, t, 3, padding=1), nn.ReLU(), nn.Conv2D(t, t, 3, padding=1))
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):  # fan_out = out_channels * k * k
                fan_out = layer.weight.shape[0] * layer.weight.shape[2] * layer.weight.shape[3]
                layer.weight.set_value(paddle.normal(0.0, math.sqrt(2.0 / fan_out), layer.weight.shape))

    def channel_mask(self, n, c):
        return (paddle.rand([n, c, 1, 1]) >= self.lambda_mgd).astype("float32")

    def forward(self, s, t):
        return self.distance(self.generate(s, t), t)

    def generate(self, s, t):
        """The generator's rebuild of the teacher's map (the part with parameters)."""
        if s.ndim != 4 or t.ndim != 4 or list(s.shape[-2:]) != list(t.shape[-2:]):
            raise ConfigError(f"MGDLoss compares (N, C, H, W) maps of equal H, W; got student {list(s.shape)} and "
                              f"teacher {list(t.shape)}: pick s_key/t_key of the same resolution.")
        if s.shape[1] != self.student_channels or t.shape[1] != self.teacher_channels:
            raise ConfigError(f"MGDLoss was given student_channels {self.student_channels} and teacher_channels "
                              f"{self.teacher_channels} but the maps have {s.shape[1]} and {t.shape[1]} channels; "
                              f"set them to the maps' channels.")
        if self.align is not None:
            s = self.align(s)
        mask = self.channel_mask(t.shape[0], t.shape[1]).astype(s.dtype)
        return self.generation(s * mask)

    def distance(self, generated, t):
        return ((generated - t) ** 2).mean() * self.alpha_mgd


PAIR_BASE_LOSSES = {"MGDLoss": MGDLoss}


class DistillationPairLoss(PaddleClasLoss):
    default_name = "loss"

    def __init__(self, base_loss_name, weight=1.0, model_name_pairs=(), s_key=None, t_key=None, name=None, **kwargs):
        super().__init__(weight, model_name_pairs=model_name_pairs, name=name)
        if base_loss_name not in PAIR_BASE_LOSSES:
            raise ConfigError(f"DistillationPairLoss base_loss_name {base_loss_name!r} is not supported; supported: "
                              f"{', '.join(PAIR_BASE_LOSSES)}.")
        if type(s_key) is not type(t_key):
            raise ConfigError("DistillationPairLoss: s_key and t_key must both be names or both be lists")
        try:
            self.loss_func = PAIR_BASE_LOSSES[base_loss_name](**kwargs)
        except TypeError as e:
            raise ConfigError(f"DistillationPairLoss ({base_loss_name}): {e}") from None
        self.s_key, self.t_key = s_key, t_key
        #: where the model's forward puts prepare()'s result (set when the model holds this loss; see
        #: DistillationModel: a layer with parameters must run inside the model's forward under DataParallel)
        self.prepared_key = None

    def _inputs(self, predicts, a, b):
        if isinstance(self.s_key, (list, tuple)):
            return [self.pick(predicts, a, k) for k in self.s_key], [self.pick(predicts, b, k) for k in self.t_key]
        return self.pick(predicts, a, self.s_key), self.pick(predicts, b, self.t_key)

    def prepare(self, predicts):
        """The generator's outputs, one per pair (called inside the model's forward)."""
        if not hasattr(self.loss_func, "generate"):
            return None
        return [self.loss_func.generate(*self._inputs(predicts, a, b)) for a, b in self.model_name_pairs]

    def keys_needed(self):
        need = {}
        for a, b in self.model_name_pairs:
            for m, keys in ((a, self.s_key), (b, self.t_key)):
                keys = keys if isinstance(keys, (list, tuple)) else [keys]
                need.setdefault(m, []).extend(k for k in keys if k not in (None, "logits"))
        return need

    def terms(self, predicts, label):
        out = OrderedDict()
        prepared = predicts.get(self.prepared_key) if self.prepared_key else None
        for idx, (a, b) in enumerate(self.model_name_pairs):
            s, t = self._inputs(predicts, a, b)
            if prepared is not None:
                out[f"{self.name}_{idx}_{a}_{b}"] = self.loss_func.distance(prepared[idx], t)
            else:
                out[f"{self.name}_{idx}_{a}_{b}"] = self.loss_func(s, t)
        return out


LOSSES = OrderedDict((cls.__name__, cls) for cls in (
    CELoss, DistillationGTCELoss, DistillationCELoss, DistillationKLDivLoss, DistillationDMLLoss, DistillationDKDLoss,
    DistillationDISTLoss, DistillationWSLLoss, DistillationSKDLoss, DistillationRKDLoss, DistillationDistanceLoss,
    DistillationPairLoss))


def build_loss_entry(entry, where="Loss.Train"):
    """One `- LossName: {weight: ..., ...}` item -> a PaddleClasLoss."""
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ConfigError(f"{where}: each item is `- LossName: {{weight: 1.0, ...}}`, got {entry!r}")
    (name, params), = entry.items()
    params = dict(params or {})
    ensemble = params.pop("ensemble", None)  # with several frozen teachers (slim/distill/ensemble.py)
    if ensemble is not None and ensemble not in ENSEMBLES:
        raise ConfigError(f"{where}: {name} ensemble must be mean_prob, mean_logit or per_teacher (PaddleClas's "
                          f"one term per [student, teacher] pair), got {ensemble!r}")
    if name not in LOSSES:
        raise ConfigError(f"{where}: loss {name!r} is not supported here; supported: {', '.join(LOSSES)} "
                          f"(DistillationPairLoss with base_loss_name MGDLoss).")
    schedule = build_schedule(params.pop("weight_schedule", None), f"{where}.{name}")
    try:
        loss = LOSSES[name](**params)
    except TypeError as e:
        raise ConfigError(f"{where}: {name} could not be built from {sorted(params)}: {e}") from None
    loss.schedule, loss.origin = schedule, f"{where}.{name}.weight"
    if ensemble is not None:
        if not isinstance(loss, _PairLoss):
            raise ConfigError(f"{where}: `ensemble` combines the teachers of model_name_pairs; {name} has none.")
        loss.ensemble = ensemble
    return loss


class CombinedLoss:
    """Every `Loss.Train` entry on one model output; term names as PaddleClas logs them (a name produced twice
    is an error: PaddleClas would silently keep one). `entry_of[term]` is the entry that produced a term.
    Entries with a `weight_schedule` get the step's position through set_step (the trainer's LossWeightHook)."""

    def __init__(self, losses):
        self.losses = list(losses)
        self.entry_of = OrderedDict()

    def __call__(self, predicts, batch):
        label = batch["label"] if isinstance(batch, dict) else batch
        out = OrderedDict()
        for loss in self.losses:
            for k, v in loss(predicts, label).items():
                if k in out or k == "loss":
                    raise ConfigError(f"Two Loss.Train terms are both named {k!r}; give one of them another `name`.")
                out[k] = v
                self.entry_of[k] = loss
        return out

    # ----- weight_schedule ----------------------------------------------------------------------------
    def _labels(self):
        names = [type(loss).__name__ for loss in self.losses]
        return [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]

    @property
    def has_schedules(self):
        return any(loss.schedule is not None for loss in self.losses)

    def schedules(self):
        return OrderedDict((label, loss.schedule) for label, loss in zip(self._labels(), self.losses)
                           if loss.schedule is not None)

    def set_step(self, iteration, epoch=0, total_iters=None, total_epochs=None):
        for loss in self.losses:
            loss.factor = 1.0
            if iteration is not None and loss.schedule is not None:
                loss.factor = loss.schedule.factor(iteration, epoch, total_iters, total_epochs)

    def current_weights(self, scheduled_only=False):
        return OrderedDict((label, loss.weight * loss.factor) for label, loss in zip(self._labels(), self.losses)
                           if not scheduled_only or loss.schedule is not None)
