"""DeiT's distillation token (Touvron et al., ICML 2021) as a distillation pair.

A DeiT student carries two tokens, each read by its own classifier: the class token by `head`, the
distillation token by `head_dist`. With a teacher, the class head learns the labels (the task's loss) and the
distillation head learns the teacher; evaluation averages the two heads.

    distill_token: hard                        # CE of head_dist's logits with the teacher's argmax
    distill_token: {type: soft, tau: 3}        # tau^2 KL(softmax(z_t / tau) || softmax(z_dist / tau))
    distill_token: {type: hard, weight: 1.0, head: head_dist}

`weight` (default 1.0) multiplies the token term; the task's loss keeps its own coef. DeiT's code weighs them
(1 - alpha) CE + alpha token, alpha 0.5: equal weights, as the defaults here (or coef 0.5 and weight 0.5).
The soft term is averaged over samples (KLLoss); DeiT's code divides its summed KL by N x classes instead.
`head` names the student's distillation classifier (PaddleClas's DeiT and this package's `DeiT` model:
`head_dist`). The teacher side is its logits, read where the task reads the teacher's (`logits_ref` of the teacher's
config: the same name for a DeiT, ViT or CNN student of one teacher, so they share one teacher-output cache).

    pairs = distill_token_pairs(student_cfg.get("distill_token"), task.logits_ref(teacher_cfg))
"""
from typing import List

from .adaptor import LayerRef
from .errors import ConfigError
from .pairs import Pair

TOKEN_TYPES = ("hard", "soft")
DEFAULT_HEAD = "head_dist"
_KEYS = {"type", "tau", "weight", "head"}


def token_loss(kind: str, tau: float = 1.0) -> dict:
    """The loss config of DeiT's distillation-token term."""
    if kind == "hard":
        return {"type": "HardDistillationLoss"}
    return {"type": "KLLoss", "temperature": float(tau)}


def parse_distill_token(spec, where: str = "distill_token") -> dict:
    """`hard`, `soft` or {type, tau, weight, head} -> {type, tau, weight, head} (None/false: None)."""
    if spec in (None, False):
        return None
    spec = {"type": spec} if isinstance(spec, str) else dict(spec) if isinstance(spec, dict) else None
    if spec is None or spec.get("type") not in TOKEN_TYPES:
        raise ConfigError(f"{where} must be `hard`, `soft` or {{type: hard|soft, tau: 1.0, weight: 1.0}}, got "
                          f"{spec!r}.")
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; use {', '.join(sorted(_KEYS))}.")
    if spec["type"] == "hard" and "tau" in spec:
        raise ConfigError(f"{where}: hard distillation takes the teacher's argmax and no temperature; remove tau "
                          f"or use type: soft.")
    tau = float(spec.get("tau", 1.0))
    if tau <= 0:
        raise ConfigError(f"{where}.tau must be > 0, got {tau}")
    return {"type": spec["type"], "tau": tau, "weight": float(spec.get("weight", 1.0)),
            "head": str(spec.get("head", DEFAULT_HEAD))}


def distill_token_pairs(spec, teacher_logits: LayerRef, where: str = "distill_token") -> List[Pair]:
    """The pair that trains the student's distillation head on the teacher's logits ([] without a spec)."""
    token = parse_distill_token(spec, where)
    if token is None:
        return []
    return [Pair(f"distill_token_{token['type']}", [LayerRef(token["head"])], [teacher_logits],
                 token_loss(token["type"], token["tau"]), token["weight"])]
