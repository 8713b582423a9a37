"""DeiT's distillation token in PaddleClas configs: a `Loss.Train` entry for a DistillationModel whose student is a
PaddleClas `DeiT_*_distilled_*` model (class token read by `head`, distillation token by `head_dist`).

    Arch:
      name: DistillationModel
      freeze_params_list: [True, False]
      models:
        - Teacher: {name: ResNet18, pretrained: output/teacher/best_model}
        - Student: {name: DeiT_tiny_distilled_patch16_224, img_size: 32}
    Loss:
      Train:
        - DistillationTokenLoss:
            weight: 1.0
            model_name_pairs: [[Student, Teacher]]
            distill_token: hard          # hard: CE with the teacher's argmax; soft: tau^2 KL at tau
            tau: 1.0                     # soft only
            alpha: 0.5                   # (1 - alpha) CE(class head, labels) + alpha token term (DeiT's)
            epsilon: 0.1                 # label smoothing of the class head's CE, as CELoss's epsilon

Terms: `CELoss_<student>_head` = (1 - alpha) x CE of the class head (`head`) with the labels (soft targets of a
mixed batch read as CELoss reads them) and `loss_token_<student>_<teacher>` = alpha x the distillation head's
(`head_dist`) term against the teacher's logits. PaddleClas's DeiT forward returns the average of the two heads,
which evaluation reports and export writes (DeiT's inference); its own DeiT configs train that average with CELoss
and no teacher. The teacher sees the same (mixed) images as the student.
"""
from collections import OrderedDict

from slim.distill.distill_token import TOKEN_TYPES
from slim.distill.errors import ConfigError
from slim.distill.losses.kd import HardDistillationLoss, KLLoss
from .losses import LOSSES, NO_IGNORE, PaddleClasLoss, cross_entropy


class DistillationTokenLoss(PaddleClasLoss):
    default_name = "loss_token"

    def __init__(self, weight=1.0, model_name_pairs=(), distill_token="hard", tau=1.0, alpha=0.5, epsilon=None,
                 cls_key="head", dist_key="head_dist", name=None):
        super().__init__(weight, model_name_pairs=model_name_pairs, name=name)
        if not self.model_name_pairs:
            raise ConfigError("DistillationTokenLoss needs model_name_pairs: [[Student, Teacher]] (the DeiT student "
                              "first)")
        if distill_token not in TOKEN_TYPES:
            raise ConfigError(f"DistillationTokenLoss distill_token must be hard or soft, got {distill_token!r}")
        if not 0 <= float(alpha) <= 1:
            raise ConfigError(f"DistillationTokenLoss alpha must be in [0, 1], got {alpha}")
        self.hard, self.alpha, self.epsilon = distill_token == "hard", float(alpha), epsilon
        self.cls_key, self.dist_key = str(cls_key), str(dist_key)
        self.token = HardDistillationLoss() if self.hard else KLLoss(temperature=float(tau), axis=1,
                                                                      ignore_index=NO_IGNORE)

    def keys_needed(self):
        """The student's two heads are captured (forward hooks on `head` and `head_dist`)."""
        return {s: [self.cls_key, self.dist_key] for s, _ in self.model_name_pairs}

    def terms(self, predicts, label):
        out = OrderedDict()
        for s, t in self.model_name_pairs:
            cls_logits, dist_logits = self.pick(predicts, s, self.cls_key), self.pick(predicts, s, self.dist_key)
            out[f"CELoss_{s}_{self.cls_key}"] = (1 - self.alpha) * cross_entropy(cls_logits, label, self.epsilon)
            out[f"{self.name}_{s}_{t}"] = self.alpha * self.token(dist_logits, self.pick(predicts, t, None))
        return out


LOSSES[DistillationTokenLoss.__name__] = DistillationTokenLoss
