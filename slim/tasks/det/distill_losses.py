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
- `PPDetCWDFeatureLoss`: ppdet's own CWDFeatureLoss (slim_method CWD), not the paper's tau^2 form of the
  engine's SegChannelwiseLoss; see the class.
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


# ----- PPYOLOEDistill (ppdet's DistillPPYOLOELoss) ----------------------------------------------------
@register_loss()
class PPDetFeatureLoss(nn.Layer):
    """One level of DistillPPYOLOELoss's feature term: ppdet's own CWDFeatureLoss, PKDFeatureLoss,
    MGDFeatureLoss or MimicFeatureLoss, built with the arguments DistillPPYOLOELoss gives it:

        cwd    normalize=True (each map standardised per channel over N, H, W first), tau 1; 1x1 align
               convolution when the channel counts differ
        pkd    normalize=True: L = mean((norm(F_s) - norm(F_t))^2) / 2 (Cao et al.; the student is resized
               to the teacher's H, W); equal channels needed: the pair's `align` connector maps them
        mgd    loss_func='ssim', normalize=True: L = clip((1 - SSIM_11x11(norm(G(align(F_s))), norm(F_t))) / 2,
               0, 1), G = conv3x3 -> ReLU -> conv3x3 (ppdet's form: no random mask, SSIM instead of Yang et
               al.'s masked MSE)
        mimic  normalize=True: L = mean((norm(align(F_s)) - norm(F_t))^2)

    The align convolutions and MGD's generator train with the student (ppdet builds them but leaves them at
    their initial values: DistillPPYOLOELoss keeps them in a plain list and PPYOLOEDistillModel hands the
    optimizer the student's parameters alone).
    """
    pair_arity = 1
    KINDS = {"cwd": "CWDFeatureLoss", "pkd": "PKDFeatureLoss", "mgd": "MGDFeatureLoss", "mimic": "MimicFeatureLoss"}

    def __init__(self, kind="pkd", student_channels=256, teacher_channels=256):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {', '.join(self.KINDS)} (fgd is FGDFeatureLoss), got {kind!r}")
        import_ppdet()
        from ppdet.slim import distill_loss
        self.kind = kind
        s, t = int(student_channels), int(teacher_channels)
        cls = getattr(distill_loss, self.KINDS[kind])
        if kind == "pkd":
            self.loss = cls(student_channels=s, teacher_channels=t, normalize=True, resize_stu=True)
        elif kind == "mgd":
            self.loss = cls(student_channels=s, teacher_channels=t, normalize=True, loss_func="ssim")
        else:
            self.loss = cls(student_channels=s, teacher_channels=t, normalize=True)
        # pkd compares equal shapes (a connector aligns the channels); the others align inside
        self.same_shape = kind == "pkd"

    def forward(self, student, teacher):
        if self.kind == "cwd":
            self._check_cwd_maps(student, teacher)
        return self.loss(student, teacher.detach()).reshape([])

    def _check_cwd_maps(self, student, teacher):
        """ppdet's CWDFeatureLoss asserts equal H, W and, without its align convolution, multiplies the two
        softmaxes elementwise (maps of different channel counts broadcast or fail inside): one clear error."""
        name = type(self).__name__
        if student.ndim != 4 or teacher.ndim != 4:
            raise ShapeMismatchError(f"{name}: ppdet's CWDFeatureLoss takes (N, C, H, W) maps, got student "
                                     f"{list(student.shape)} and teacher {list(teacher.shape)}.")
        if list(student.shape[2:]) != list(teacher.shape[2:]):
            raise ShapeMismatchError(f"{name}: ppdet's CWDFeatureLoss compares maps of equal H, W; the student's "
                                     f"is {list(student.shape)} and the teacher's {list(teacher.shape)}.")
        align = self.loss.align
        s_ch, t_ch = int(student.shape[1]), int(teacher.shape[1])
        if align is None and s_ch != t_ch:
            raise ShapeMismatchError(
                f"{name}: the student map has {s_ch} channels and the teacher's {t_ch}; set student_channels: "
                f"{s_ch} and teacher_channels: {t_ch} (ppdet's CWDFeatureLoss then maps the student's channels to "
                f"the teacher's with a 1x1 convolution).")
        if align is not None and (s_ch, t_ch) != (align.weight.shape[1], align.weight.shape[0]):
            raise ShapeMismatchError(
                f"{name} was built for student_channels {align.weight.shape[1]} and teacher_channels "
                f"{align.weight.shape[0]}, but the maps have {s_ch} and {t_ch} channels; set them to the maps'.")


@register_loss()
class PPDetCWDFeatureLoss(PPDetFeatureLoss):
    """ppdet 2.6's CWDFeatureLoss itself (the loss of slim_method CWD), with its arguments. On student and
    teacher maps (N, C_s, H, W), (N, C_t, H, W) of equal H, W:

        s = align(student) if C_s != C_t (a 1x1 convolution, C_s -> C_t), else student
        s, t = norm(s), norm(teacher)      (normalize: each channel standardised over N, H, W:
                                            (x - mean) / (std + 1e-6), std with ddof 1; off by default)
        p_s, p_t = softmax over the H*W positions of each channel of s / tau, t / tau
        L = sum_{n,c,i} p_t (log(1e-5 + p_t) - log(1e-5 + p_s)) / (C_s * N)

    No tau^2 factor (the engine's SegChannelwiseLoss keeps Shu et al.'s tau^2), 1e-5 inside both logs, and
    the sum divided by the student's channel count before alignment, all as ppdet computes it. ppdet's
    `weight` (its loss_weight) is the pair's weight here: it multiplies L the same way.

        - {student: {layer: neck, idx: 0}, teacher: {layer: neck, idx: 0}, weight: 5.0,
           loss: {type: PPDetCWDFeatureLoss, student_channels: 128, teacher_channels: 256, normalize: true, tau: 1}}

    Without channel counts the maps must have equal channels (no align convolution). The align convolution
    trains with the student and is saved with it, as in the PPYOLOEDistill feature terms; ppdet builds it but
    never trains it (its optimizer gets the student's parameters alone), and none of PaddleDetection's CWD
    configs has one (their channel counts are equal).
    """

    def __init__(self, student_channels: int = None, teacher_channels: int = None, normalize: bool = False,
                 tau: float = 1.0):
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError(f"give both student_channels and teacher_channels, or neither (equal channels); got "
                             f"{student_channels} and {teacher_channels}")
        if float(tau) <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        channels = (1, 1) if student_channels is None else (int(student_channels), int(teacher_channels))
        super().__init__("cwd", *channels)
        # the same object ppdet's CWDFeatureLoss(student_channels, teacher_channels, normalize, tau) builds:
        # PPDetFeatureLoss made it with DistillPPYOLOELoss's settings (normalize on, tau 1), which are plain
        # attributes its forward reads
        self.loss.normalize, self.loss.tau = bool(normalize), float(tau)


@register_loss()
class PPYOLOELogitsLoss(nn.Layer):
    """DistillPPYOLOELoss's logit term on the PP-YOLOE heads of both models, from their raw per-level maps
    (sources per side: `yolo_head.pred_cls.i` for each level, then `yolo_head.pred_reg.i`):

        QFL   sum over cells and classes of BCE(p_s, p_t) |p_s - p_t|^2 / pos_num   (p: sigmoid class scores)
        GIoU  sum over positive cells of w * (1 - GIoU(box_s, box_t)) / sum w
        DFL   sum over positive cells of w * sum_edges CE(softmax(d_t), d_s) / sum w / 4 (d: edge-bin logits)
        L     = iou * GIoU + class * QFL + dfl * DFL (+ KD: ppdet's KnowledgeDistillationKLDivLoss on the
                positive cells' class scores, weight and T of logits_ld_params, when `ld` is on)

    w = the assigned score of each positive cell (summed over classes), pos_num = max(1, sum of assigned
    scores), boxes in grid units, as ppdet's PPYOLOEHead computes them for distillation.

    Label assignment: ppdet's PPYOLOEDistillModel copies the teacher head's task-aligned assignment into the
    student's head once the static-assigner epochs are over; before that the teacher's ATSS assignment is not
    shared and the student's own (ATSS, scored with the student's boxes) is used. The same here, computed from
    the frozen eval-mode teacher's outputs (`label` carries the batch's gt_class, gt_bbox, pad_gt_mask and the
    trainer's epoch_id): TaskAlignedAssigner on the teacher's scores and boxes (epoch >= static_epochs), else
    ATSSAssigner on the student's boxes. The assignment decides which cells are positive, their weights and
    pos_num. The student's own detection loss keeps its own assignment (see slim_config.py).
    """
    uses_label = True
    same_shape = True

    def __init__(self, num_levels=3, fpn_strides=(32, 16, 8), reg_range=(0, 17), grid_cell_scale=5.0,
                 grid_cell_offset=0.5, static_epochs=4, static_topk=9, topk=13, alpha=1.0, beta=6.0,
                 class_weight=1.0, iou_weight=2.5, dfl_weight=0.5, ld=False, ld_weight=20000, ld_T=10):
        super().__init__()
        import_ppdet()
        from ppdet.modeling.assigners.atss_assigner import ATSSAssigner
        from ppdet.modeling.assigners.task_aligned_assigner import TaskAlignedAssigner
        from ppdet.modeling.losses.iou_loss import GIoULoss
        from ppdet.slim.distill_loss import KnowledgeDistillationKLDivLoss
        self.num_levels = int(num_levels)
        self.pair_arity = 2 * self.num_levels
        self.fpn_strides = [int(s) for s in fpn_strides]
        if len(self.fpn_strides) != self.num_levels:
            raise ValueError(f"{len(self.fpn_strides)} fpn_strides for {self.num_levels} levels")
        self.reg_range = (int(reg_range[0]), int(reg_range[1]))
        self.grid_cell_scale, self.grid_cell_offset = float(grid_cell_scale), float(grid_cell_offset)
        self.static_epochs = int(static_epochs)
        self.static_topk = int(static_topk)
        self.assigner = TaskAlignedAssigner(topk=int(topk), alpha=float(alpha), beta=float(beta))
        self.giou = GIoULoss()
        self.weights = {"class": float(class_weight), "iou": float(iou_weight), "dfl": float(dfl_weight)}
        self.kd = KnowledgeDistillationKLDivLoss(loss_weight=ld_weight, T=ld_T) if ld else None
        self._atss_cls = ATSSAssigner

    def _decode(self, cls_maps, reg_maps, anchor_points_s):
        scores = paddle.concat([F.sigmoid(c).flatten(2).transpose([0, 2, 1]) for c in cls_maps], axis=1)
        dist = paddle.concat([r.flatten(2).transpose([0, 2, 1]) for r in reg_maps], axis=1)
        n, cells = dist.shape[0], dist.shape[1]
        bins = self.reg_range[1] - self.reg_range[0]
        if dist.shape[2] != 4 * bins:
            raise ShapeMismatchError(f"PPYOLOELogitsLoss: the box maps have {dist.shape[2]} channels, expected "
                                     f"4 x {bins} (reg_max + 1 bins per edge); check the head's reg_max.")
        dist = dist.reshape([n, cells, 4, bins])
        proj = paddle.linspace(self.reg_range[0], self.reg_range[1] - 1, bins).astype(dist.dtype)
        ltrb = (F.softmax(dist, axis=-1) * proj).sum(-1)
        from ppdet.modeling.bbox_utils import batch_distance2bbox
        return scores, dist, batch_distance2bbox(anchor_points_s, ltrb)

    def assign(self, s_boxes, t_scores, t_boxes, anchors, anchor_points, num_anchors_list, stride_tensor, label):
        """(assigned_labels, assigned_scores) as the student's head would use them this epoch."""
        num_classes = t_scores.shape[-1]
        gt_labels = label["gt_class"].astype("int64")
        gt_bboxes = label["gt_bbox"].astype("float32")
        pad = label["pad_gt_mask"].astype("float32")
        epoch = int(label["epoch_id"]) if label.get("epoch_id") is not None else 0
        if epoch < self.static_epochs:
            atss = self._atss_cls(topk=self.static_topk, num_classes=num_classes)
            out = atss(anchors, num_anchors_list, gt_labels, gt_bboxes, pad, bg_index=num_classes,
                       pred_bboxes=s_boxes.detach() * stride_tensor)
        else:
            out = self.assigner(t_scores, t_boxes * stride_tensor, anchor_points, num_anchors_list, gt_labels,
                                gt_bboxes, pad, bg_index=num_classes)
        return out[0], out[2]

    def forward(self, student, teacher, label=None):
        missing = [k for k in ("gt_class", "gt_bbox", "pad_gt_mask") if not isinstance(label, dict) or k not in label]
        if missing:
            raise ConfigError(f"PPYOLOELogitsLoss needs {missing} in the training batch: end the student config's "
                              f"TrainReader.batch_transforms with PadGT (as PP-YOLOE's readers do).")
        from ppdet.modeling.assigners.utils import generate_anchors_for_grid_cell
        n = self.num_levels
        s_cls, s_reg = student[:n], student[n:]
        t_cls, t_reg = [t.detach() for t in teacher[:n]], [t.detach() for t in teacher[n:]]
        anchors, anchor_points, num_anchors_list, stride_tensor = generate_anchors_for_grid_cell(
            s_cls, self.fpn_strides, self.grid_cell_scale, self.grid_cell_offset)
        anchor_points_s = anchor_points / stride_tensor
        s_scores, s_dist, s_boxes = self._decode(s_cls, s_reg, anchor_points_s)
        t_scores, t_dist, t_boxes = self._decode(t_cls, t_reg, anchor_points_s)
        num_classes = s_scores.shape[-1]
        if label["gt_bbox"].shape[1] == 0:  # no box in the whole batch: no positive cell
            assigned_labels = paddle.full(s_scores.shape[:2], num_classes, dtype="int64")
            assigned_scores = paddle.zeros_like(s_scores)
        else:
            assigned_labels, assigned_scores = self.assign(s_boxes, t_scores, t_boxes, anchors, anchor_points,
                                                           num_anchors_list, stride_tensor, label)
        pos_num = assigned_scores.sum()
        if paddle.distributed.get_world_size() > 1:
            paddle.distributed.all_reduce(pos_num)
            pos_num = pos_num / paddle.distributed.get_world_size()
        pos_num = paddle.clip(pos_num, min=1.0)
        # QFL on the class scores (ppdet: quality_focal_loss(use_sigmoid=False, num_total_pos=pos_num))
        p_s, p_t = s_scores.reshape([-1, num_classes]), t_scores.reshape([-1, num_classes])
        qfl = (F.binary_cross_entropy(p_s, p_t, reduction="none") * (p_s - p_t).abs().pow(2.0)).sum(1)
        qfl = qfl.sum() / pos_num
        mask = assigned_labels != num_classes
        num_pos = int(mask.astype("int32").sum())
        if num_pos > 0:
            idx = paddle.nonzero(mask.flatten()).flatten()
            weight = paddle.gather(assigned_scores.sum(-1).flatten(), idx).unsqueeze(-1)
            box_s = paddle.gather(s_boxes.reshape([-1, 4]), idx)
            box_t = paddle.gather(t_boxes.reshape([-1, 4]), idx)
            giou = paddle.sum(self.giou(box_s, box_t) * weight) / weight.sum()
            bins = s_dist.shape[-1]
            d_s = paddle.gather(s_dist.reshape([-1, 4 * bins]), idx).reshape([-1, bins])
            d_t = paddle.gather(t_dist.reshape([-1, 4 * bins]), idx).reshape([-1, bins])
            dfl = F.cross_entropy(d_s, F.softmax(d_t, axis=-1), soft_label=True, reduction="none").sum(1)
            dfl = (dfl * weight.expand([-1, 4]).reshape([-1])).sum(-1) / weight.sum() / 4.0
        else:
            giou = dfl = paddle.zeros([])
        loss = giou * self.weights["iou"] + qfl * self.weights["class"] + dfl * self.weights["dfl"]
        if self.kd is not None and num_pos > 0:
            idx = paddle.nonzero(mask.flatten()).flatten()
            loss = loss + self.kd(paddle.gather(p_s, idx), paddle.gather(p_t, idx), avg_factor=num_pos).reshape([])
        return loss.reshape([])
