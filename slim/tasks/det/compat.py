"""Importing paddledet 2.6 on Paddle 3 quietly, and the work-arounds it needs.

- `import ppdet` prints a numba warning twice (PP-Tracking's Kalman filter, unused here): silenced.
- ppdet's workspace keeps one global config that every `create()` reads; building the teacher after the
  student would mix their settings (PaddleDetection #5976). `workspace.ppdet_scope` gives each build its
  own config and restores the global one afterwards.
- `ppdet.modeling.ops.multiclass_nms` builds its op with the legacy static-graph LayerHelper outside
  dygraph, which Paddle 3's static graph (PIR) refuses (`TypeError ... multiclass_nms3 should be one of
  [str, bytes, Variable]`), so `paddle.jit.save` of any model with NMS failed. In PIR traces it now
  calls the same kernel through `paddle._C_ops.multiclass_nms3` (old-IR traces, as the int8 export makes,
  keep ppdet's LayerHelper op).
- `ppdet.modeling.losses.gfocal_loss.quality_focal_loss` (GFL's QFL) multiplies a float loss by a bool mask,
  which Paddle 3 refuses (`Type promotion only support calculations between floating-point numbers`): the
  same computation with the mask as float32.
- `ATSSAssigner.get_vlr_region` (LD's valuable localization region, Gt2GFLTarget(compute_vlr_region: true))
  returns a tuple instead of the region for an image without boxes, which then cannot be batched: the
  region of such an image is all zeros.
- PP-YOLOE's label assigners (`TaskAlignedAssigner`, `ATSSAssigner`) add an int64 index to an index made
  with the dtype of `gt_class` (int32 from the readers), which Paddle 3 refuses (`Type promotion only support
  calculations between floating-point numbers ...`): they are called with `gt_class` as int64.
- ppdet's distillation model calls the teacher in eval mode without `im_shape` / `scale_factor`
  (`KeyError: 'im_shape'`); this package calls the teacher's feature path instead (`features.py`).
"""
import contextlib
import io
import logging

_PPDET = None


def import_ppdet():
    """`ppdet`, imported once, without its import-time noise."""
    global _PPDET
    if _PPDET is None:
        with contextlib.redirect_stdout(io.StringIO()):
            import ppdet  # noqa: F401
            import ppdet.data.transform  # noqa: F401
            import ppdet.modeling  # noqa: F401
        # ppdet's loggers print every skipped box and transform failure at WARNING on stdout; this
        # package reports those itself (counted, with file names).
        for name in ("ppdet.data.source.voc", "ppdet.data.source.coco", "reader",
                     "ppdet.data.transform.operators", "ppdet.data.transform.batch_operators"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _patch_multiclass_nms()
        _patch_quality_focal_loss()
        _patch_vlr_region()
        _patch_assigner_label_dtype()
        _PPDET = ppdet
    return _PPDET


def _patch_multiclass_nms():
    import paddle
    from ppdet.modeling import ops
    original = ops.multiclass_nms

    def multiclass_nms(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold=0.3,
                       normalized=True, nms_eta=1., background_label=-1, return_index=False,
                       return_rois_num=True, rois_num=None, name=None):
        if paddle.in_dynamic_mode() or not paddle.framework.in_pir_mode():
            return original(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
                            nms_eta, background_label, return_index, return_rois_num, rois_num, name)
        out, index, nms_rois_num = paddle._C_ops.multiclass_nms3(
            bboxes, scores, rois_num, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
            nms_eta, background_label)
        return out, (nms_rois_num if return_rois_num else None), (index if return_index else None)

    ops.multiclass_nms = multiclass_nms


def _patch_quality_focal_loss():
    import numpy as np
    import paddle
    import paddle.nn.functional as F
    from ppdet.modeling.losses import gfocal_loss

    def quality_focal_loss(pred, target, beta=2.0, use_sigmoid=True):
        """ppdet 2.6's QFL (Li et al., 2020), with its positive mask in float32."""
        label, score = target
        func = F.binary_cross_entropy_with_logits if use_sigmoid else F.binary_cross_entropy
        pred_sigmoid = F.sigmoid(pred) if use_sigmoid else pred
        zerolabel = paddle.zeros(pred.shape, dtype="float32")
        loss = func(pred, zerolabel, reduction="none") * pred_sigmoid.pow(beta)
        bg_class_ind = pred.shape[1]
        pos = paddle.logical_and(label >= 0, label < bg_class_ind).nonzero().squeeze(1)
        if pos.shape[0] == 0:
            return loss.sum(axis=1)
        pos_label = paddle.gather(label, pos, axis=0)
        pos_mask = np.zeros(pred.shape, dtype="float32")
        pos_mask[pos.numpy(), pos_label.numpy()] = 1
        pos_mask = paddle.to_tensor(pos_mask)
        score = score.unsqueeze(-1).expand([-1, pred.shape[1]]).cast("float32")
        loss_pos = func(pred, score, reduction="none") * (score - pred_sigmoid).abs().pow(beta)
        loss = loss * (1 - pos_mask) + loss_pos * pos_mask
        return loss.sum(axis=1)

    gfocal_loss.quality_focal_loss = quality_focal_loss


def _patch_vlr_region():
    from ppdet.data.transform.atss_assigner import ATSSAssigner
    original = ATSSAssigner.get_vlr_region
    if getattr(original, "_slim_patched", False):
        return

    def get_vlr_region(self, bboxes, num_level_bboxes, gt_bboxes, gt_bboxes_ignore=None, gt_labels=None):
        region = original(self, bboxes, num_level_bboxes, gt_bboxes, gt_bboxes_ignore, gt_labels)
        return region[0] if isinstance(region, tuple) else region  # no boxes: (zeros, zeros)

    get_vlr_region._slim_patched = True
    ATSSAssigner.get_vlr_region = get_vlr_region


def _patch_assigner_label_dtype():
    import paddle
    from ppdet.modeling.assigners.atss_assigner import ATSSAssigner
    from ppdet.modeling.assigners.task_aligned_assigner import TaskAlignedAssigner
    for cls, position in ((ATSSAssigner, 2), (TaskAlignedAssigner, 4)):  # where gt_labels is in forward()
        original = cls.forward
        if getattr(original, "_slim_patched", False):
            continue

        def forward(self, *args, _original=original, _at=position, **kwargs):
            args = list(args)
            if len(args) > _at and isinstance(args[_at], paddle.Tensor) and args[_at].dtype != paddle.int64:
                args[_at] = args[_at].astype("int64")
            elif isinstance(kwargs.get("gt_labels"), paddle.Tensor):
                kwargs["gt_labels"] = kwargs["gt_labels"].astype("int64")
            return _original(self, *args, **kwargs)

        forward._slim_patched = True
        cls.forward = forward
