"""Distillation losses of PaddleDetection 2.6's slim methods, as `distill:` pair losses.

- `FGDFeatureLoss` (Yang et al., CVPR 2022, "Focal and Global Knowledge Distillation"): the terms of ppdet's
  own class (its masks built here: ppdet's mask code fails on Paddle 3), called with the ground-truth boxes
  (`label=`, pixel x1, y1, x2, y2 of the network input). On one feature map pair (student aligned to the teacher's
  channels):
      A_S = H*W * softmax(mean_c |F| / temp) (spatial), A_C = C * softmax(mean_hw |F| / temp) (channel), teacher's;
      M_fg = 1 / box area (pixels of the map) inside boxes (max over boxes), M_bg = 1 / #bg outside, 0 inside;
      L = alpha * sum M_fg A_S A_C (F_t - F_s)^2 / N + beta * sum M_bg A_S A_C (F_t - F_s)^2 / N
        + gamma * (sum |A_C^t - A_C^s| + sum |A_S^t - A_S^s|) / N + lambda * sum (R(F_t) - R(F_s))^2 / N
  with R the GcBlock (x + conv-LN-ReLU-conv(softmax-pooled context)). As in ppdet, the loss's own convolutions
  are not trained (its last GcBlock convolution starts at 0, so the global term is lambda * sum (F_t-F_s)^2 / N).
- `LDLoss` (Zheng et al., CVPR 2022, "Localization Distillation"): the terms of ppdet's LDGFLHead, computed
  from the GFL heads' raw outputs of both models and the student's GFL targets (`label=`):
      ld     = sum_levels sum_pos w * KL_T(teacher edge bins || student edge bins) / 4       (main region)
      ld_vlr = sum_levels sum_vlr v * KL_T(...) / 16                                        (valuable region)
      kd     = sum_levels sum_pos lw * KL_T(teacher class logits || student's) / #pos
  KL_T(p || q) = T^2 * mean_bins softmax(p/T) (log softmax(p/T) - log softmax(q/T)) (ppdet's
  KnowledgeDistillationKLDivLoss: the mean over the bins as in the authors' code), w = the student's max class
  probability at the positive cell, v = the valuable-region weight of Gt2GFLTarget(compute_vlr_region: true).
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from slim.distill.errors import ConfigError, ShapeMismatchError
from slim.distill.losses import register_loss
from .compat import import_ppdet


@register_loss("FGDLoss")
class FGDFeatureLoss(nn.Layer):
    """ppdet's FGDFeatureLoss on one feature-map pair; `label` holds `gt_bbox` (N, M, 4) in pixels (x1, y1,
    x2, y2, all-zero rows are padding) and `im_shape` (N, 2). Channels must be equal (a pair `align`
    connector maps the student's to the teacher's).

        - {student: {layer: neck, idx: 0}, teacher: {layer: neck, idx: 0},
           loss: {type: FGDFeatureLoss, channels: 256, alpha_fgd: 0.001, ...}, align: {type: 1x1conv}}
    """
    uses_label = True
    same_shape = True
    pair_arity = 1

    def __init__(self, channels=256, temp=0.5, alpha_fgd=0.001, beta_fgd=0.0005, gamma_fgd=0.001,
                 lambda_fgd=0.000005, normalize=False, loss_weight=1.0):
        super().__init__()
        import_ppdet()
        from ppdet.slim.distill_loss import FGDFeatureLoss as PPDetFGD
        self.channels = int(channels)
        self.fgd = PPDetFGD(self.channels, self.channels, normalize=bool(normalize), loss_weight=loss_weight,
                            temp=temp, alpha_fgd=alpha_fgd, beta_fgd=beta_fgd, gamma_fgd=gamma_fgd,
                            lambda_fgd=lambda_fgd)
        for p in self.fgd.parameters():
            p.stop_gradient = True

    def forward(self, student, teacher, label=None):
        if not isinstance(label, dict) or "gt_bbox" not in label or "im_shape" not in label:
            raise ConfigError("FGDFeatureLoss needs the ground-truth boxes of the batch (gt_bbox and im_shape): "
                              "keep `gt_bbox` in the training batch (e.g. PadGT or PadBox in "
                              "TrainReader.batch_transforms; GFL's Gt2GFLTarget drops it).")
        if student.ndim != 4 or teacher.shape[1] != self.channels:
            raise ShapeMismatchError(
                f"FGDFeatureLoss was set for {self.channels} channels but the teacher map has shape "
                f"{list(teacher.shape)}; set `channels` (the FGD section's teacher_channels) to the teacher's.")
        return self._fgd(student, teacher.detach(), label["gt_bbox"], label["im_shape"])

    @staticmethod
    def masks(boxes, im_shape, h, w):
        """FGD's foreground mask (1 / box area in map cells, max over boxes) and background mask (1 / #cells
        outside every box, 0 inside), as ppdet builds them (box edges floor / ceil, both ends included)."""
        import numpy as np
        boxes = np.asarray(boxes, dtype=np.float32)
        im_shape = np.asarray(im_shape, dtype=np.float32)
        fg = np.zeros((len(boxes), h, w), dtype=np.float32)
        bg = np.ones((len(boxes), h, w), dtype=np.float32)
        for i, image_boxes in enumerate(boxes):
            scale = np.array([w / im_shape[i][1], h / im_shape[i][0]] * 2, dtype=np.float32)
            for box in image_boxes:
                if box.sum() <= 0:  # padding
                    continue
                x1, y1, x2, y2 = box * scale
                w0, h0 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
                w1, h1 = int(np.ceil(x2)), int(np.ceil(y2))
                area = 1.0 / ((h1 + 1 - h0) * (w1 + 1 - w0))
                fg[i, h0:h1 + 1, w0:w1 + 1] = np.maximum(fg[i, h0:h1 + 1, w0:w1 + 1], area)
            bg[i] = (fg[i] <= 0).astype(np.float32)
            if bg[i].sum():
                bg[i] /= bg[i].sum()
        return fg, bg

    def _fgd(self, student, teacher, gt_bbox, im_shape):
        """ppdet's FGDFeatureLoss.forward with its masks built in NumPy (its own mask code divides a float
        by an int32 tensor, which Paddle 3 refuses); the terms are ppdet's methods."""
        fgd = self.fgd
        if fgd.normalize:
            from ppdet.slim.distill_loss import feature_norm
            student, teacher = feature_norm(student), feature_norm(teacher)
        t_spatial, t_channel = fgd.spatial_channel_attention(teacher, fgd.temp)
        s_spatial, s_channel = fgd.spatial_channel_attention(student, fgd.temp)
        h, w = student.shape[2], student.shape[3]
        fg, bg = self.masks(gt_bbox.numpy(), im_shape.numpy(), h, w)
        fg, bg = paddle.to_tensor(fg, dtype=student.dtype), paddle.to_tensor(bg, dtype=student.dtype)
        fg_loss, bg_loss = fgd.feature_loss(student, teacher, fg, bg, t_channel, t_spatial)
        mask_loss = fgd.mask_loss(s_channel, t_channel, s_spatial, t_spatial)
        rela_loss = fgd.relation_loss(student, teacher)
        loss = (fgd.alpha_fgd * fg_loss + fgd.beta_fgd * bg_loss + fgd.gamma_fgd * mask_loss
                + fgd.lambda_fgd * rela_loss)
        return loss * fgd.loss_weight


@register_loss("GFLLocalizationDistillLoss")
class LDLoss(nn.Layer):
    """One term of Localization Distillation on the GFL heads of both models (module doc). Sources per side:
    the class-score map of each level, then the box-distribution map of each level (2 x num_levels tensors):

        - {name: loss_ld, loss: {type: LDLoss, term: ld, num_levels: 5, T: 10, loss_weight: 0.25},
           student: [{layer: head.gfl_head_cls, call: 0}, ..., head.p3_feat, ...], teacher: [same]}
    """
    uses_label = True
    same_shape = True
    TERMS = ("ld", "ld_vlr", "kd")

    def __init__(self, term="ld", num_levels=5, T=10, loss_weight=0.25):
        super().__init__()
        if term not in self.TERMS:
            raise ValueError(f"term must be one of {', '.join(self.TERMS)}, got {term!r}")
        import_ppdet()
        from ppdet.slim.distill_loss import KnowledgeDistillationKLDivLoss
        self.term, self.num_levels = term, int(num_levels)
        self.pair_arity = 2 * self.num_levels
        self.kl = KnowledgeDistillationKLDivLoss(loss_weight=loss_weight, T=T)

    @staticmethod
    def _rows(x):
        return x.transpose([0, 2, 3, 1]).reshape([-1, x.shape[1]])

    def forward(self, student, teacher, label=None):
        needed = {"ld": ("labels",), "kd": ("labels", "label_weights"), "ld_vlr": ("vlr_regions",)}[self.term]
        missing = [k for k in needed if not isinstance(label, dict) or k not in label]
        if missing:
            raise ConfigError(
                f"LD ({self.term}) needs the student's GFL targets {missing} in the batch: the student config's "
                f"TrainReader.batch_transforms must end with Gt2GFLTarget"
                + (" with `compute_vlr_region: true`." if "vlr_regions" in missing else "."))
        n = self.num_levels
        s_cls, s_reg, t_cls, t_reg = student[:n], student[n:], teacher[:n], teacher[n:]
        sizes = [c.shape[2] * c.shape[3] for c in s_cls]
        cells = label[needed[0]].shape[1]
        if cells != sum(sizes):
            raise ShapeMismatchError(f"LD: the GFL targets cover {cells} cells but the head's {n} levels have "
                                     f"{sum(sizes)}; Gt2GFLTarget.downsample_ratios must list the head's fpn_stride.")
        total, start = None, 0
        for level in range(n):
            end = start + sizes[level]
            cls, reg = self._rows(s_cls[level]), self._rows(s_reg[level])
            t_c, t_r = self._rows(t_cls[level]).detach(), self._rows(t_reg[level]).detach()
            bins = reg.shape[1] // 4
            if self.term == "ld_vlr":
                vlr = label["vlr_regions"][:, start:end].reshape([-1]).astype(reg.dtype)
                keep = paddle.nonzero(vlr > 0).reshape([-1])
                if keep.shape[0] > 0:
                    weight = paddle.gather(vlr, keep).unsqueeze(-1).expand([-1, 4]).reshape([-1])
                    term = self.kl(paddle.gather(reg, keep).reshape([-1, bins]),
                                   paddle.gather(t_r, keep).reshape([-1, bins]), weight=weight, avg_factor=16.0)
                else:
                    term = reg.sum() * 0
            else:
                labels = label["labels"][:, start:end].reshape([-1])
                num_classes = cls.shape[1]
                pos = paddle.nonzero(paddle.logical_and(labels >= 0, labels < num_classes)).reshape([-1])
                if pos.shape[0] == 0:
                    term = reg.sum() * 0
                elif self.term == "ld":
                    weight = paddle.gather(F.sigmoid(cls.detach()).max(axis=1, keepdim=True), pos)
                    term = self.kl(paddle.gather(reg, pos).reshape([-1, bins]),
                                   paddle.gather(t_r, pos).reshape([-1, bins]),
                                   weight=weight.expand([-1, 4]).reshape([-1]), avg_factor=4.0)
                else:
                    lw = label["label_weights"][:, start:end].reshape([-1]).astype(cls.dtype)
                    term = self.kl(paddle.gather(cls, pos), paddle.gather(t_c, pos),
                                   weight=paddle.gather(lw, pos), avg_factor=pos.shape[0])
            total = term.reshape([]) if total is None else total + term.reshape([])
            start = end
        return total
