"""The teacher's feature path: in eval mode, backbone -> neck -> head outputs, no decoding, no NMS.

ppdet's DistillModel runs its eval-mode teacher on `{'image': ...}` alone, and YOLOv3's eval forward then
fails looking for `im_shape` (KeyError). Here the batch always carries `im_shape` and `scale_factor`, and
the teacher (frozen, eval mode, under no_grad) stops at the head: its forward returns the raw head
outputs (YOLOv3: the three output maps), which is all distillation reads (the hooks on
`yolo_head.yolo_output.N`, `neck`, ... capture the tensors). Its post-processing would be wasted work.
"""
import types

# architecture -> the attribute names of (backbone, neck, head)
FEATURE_PATHS = {
    "YOLOv3": ("backbone", "neck", "yolo_head"),
    "PPYOLOE": ("backbone", "neck", "yolo_head"),
    "PicoDet": ("backbone", "neck", "head"),
    "GFL": ("backbone", "neck", "head"),
    "TOOD": ("backbone", "neck", "head"),
    "RetinaNet": ("backbone", "neck", "head"),
    "FCOS": ("backbone", "neck", "fcos_head"),
}


def supports_feature_path(model):
    return type(model).__name__ in FEATURE_PATHS and not getattr(model, "for_mot", False)


def _feature_forward(self, inputs):
    if self.training:  # never used for training: fall back to the model's own forward
        return type(self).forward(self, inputs)
    backbone, neck, head = (getattr(self, name) for name in FEATURE_PATHS[type(self).__name__])
    self.inputs = inputs
    feats = backbone(inputs)
    if neck is not None:
        feats = neck(feats)
    return head(feats)


def install_feature_forward(model):
    """Make `model(inputs)` in eval mode return its head outputs; returns False for architectures without
    a known feature path (they keep the full eval forward, fed im_shape and scale_factor)."""
    if not supports_feature_path(model):
        return False
    model.forward = types.MethodType(_feature_forward, model)
    model._slim_feature_path = True
    return True
