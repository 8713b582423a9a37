"""The objectness-weighted YOLOv3 distillation loss, on the raw maps of the YOLOv3 output convolutions.

A YOLOv3 output map (N, A*(5+C), H, W) holds, per anchor a and cell: x, y, w, h, objectness o and C class
logits. With s the student's map, t the teacher's, sigma the sigmoid, BCE(z, p) = max(z, 0) - z*p +
log(1 + exp(-|z|)) the cross-entropy of logit z against probability p, and the means taken over
every element of the tensor inside them:

    L_reg = mean_{n,a,h,w} [ (BCE(s_x, sigma(t_x)) + BCE(s_y, sigma(t_y)) + |s_w - t_w| + |s_h - t_h|) * sigma(t_o) ]
    L_cls = mean_{n,a,h,w,c} [ BCE(s_c, sigma(t_c)) * sigma(t_o) ]
    L_obj = mean_{n,a,h,w} [ BCE(s_o, 1[t_o > 0]) ]
    L     = L_reg + L_cls + L_obj                      (one term per output level)

Box and class terms count where the teacher sees an object; the objectness term teaches the student
the teacher's hard object map. This is the loss of PaddleDetection's YOLOv3 distillation
(DistillYOLOv3Loss, weight 1000 on the sum of the three levels); here each level is one `distill:` pair:

    distill:
      - {name: obj_distill_0, student: yolo_head.yolo_output.0, teacher: yolo_head.yolo_output.0,
         loss: {type: YOLOv3DistillLoss, num_anchors: 3}, weight: 1000}

With `iou_aware: true` (PP-YOLO's IoU-aware head) the first A channels are the IoU branch; they are left out.
"""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from slim.distill.errors import ShapeMismatchError
from slim.distill.losses import register_loss


def _bce(logit, prob):
    return F.binary_cross_entropy_with_logits(logit, prob, reduction="none")


@register_loss("DistillYOLOv3Loss", "yolov3_distill")
class YOLOv3DistillLoss(nn.Layer):
    """L = reg_weight * L_reg + cls_weight * L_cls + obj_weight * L_obj on one YOLOv3 output level (module doc).

        - {student: yolo_head.yolo_output.0, teacher: yolo_head.yolo_output.0,
           loss: {type: YOLOv3DistillLoss, num_anchors: 3}, weight: 1000}
    """
    uses_label = False
    same_shape = True
    pair_arity = 1

    def __init__(self, num_anchors=3, iou_aware=False, reg_weight=1.0, cls_weight=1.0, obj_weight=1.0):
        super().__init__()
        if int(num_anchors) < 1:
            raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
        self.num_anchors, self.iou_aware = int(num_anchors), bool(iou_aware)
        self.weights = (float(reg_weight), float(cls_weight), float(obj_weight))

    def split(self, x):
        """(N, A*(5+C), H, W) -> x, y, w, h, obj (N, A, 1, H, W) and cls (N, A, C, H, W)."""
        if x.ndim != 4:
            raise ShapeMismatchError(f"YOLOv3DistillLoss expects a YOLOv3 output map (N, A*(5+C), H, W), got "
                                     f"shape {list(x.shape)}")
        n, ch, h, w = x.shape
        a = self.num_anchors
        if self.iou_aware:
            x, ch = x[:, a:], ch - a
        if ch % a or ch // a < 5:
            raise ShapeMismatchError(
                f"YOLOv3DistillLoss: {ch} channels is not num_anchors ({a}) x (5 + classes); pair the output "
                f"convolutions of the head (yolo_head.yolo_output.N) and set num_anchors to the anchors per level.")
        x = x.reshape([n, a, ch // a, h, w])
        return x[:, :, 0:1], x[:, :, 1:2], x[:, :, 2:3], x[:, :, 3:4], x[:, :, 4:5], x[:, :, 5:]

    def terms(self, student, teacher):
        sx, sy, sw, sh, so, sc = self.split(student)
        tx, ty, tw, th, to, tc = self.split(teacher.detach())
        weight = F.sigmoid(to)
        reg = (_bce(sx, F.sigmoid(tx)) + _bce(sy, F.sigmoid(ty)) + (sw - tw).abs() + (sh - th).abs()) * weight
        reg = reg.mean()
        cls = (_bce(sc, F.sigmoid(tc)) * weight).mean() if sc.shape[2] > 0 else paddle.zeros([], student.dtype)
        obj = _bce(so, (to > 0).astype(student.dtype)).mean()
        return reg, cls, obj

    def forward(self, student, teacher, label=None):
        reg, cls, obj = self.terms(student, teacher)
        return self.weights[0] * reg + self.weights[1] * cls + self.weights[2] * obj
