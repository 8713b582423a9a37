"""Importing paddledet 2.6 on Paddle 3 quietly, and the work-arounds it needs.

- `import ppdet` prints a numba warning twice (PP-Tracking's Kalman filter, unused here): silenced.
- ppdet's workspace keeps one global config that every `create()` reads; building the teacher after the
  student would mix their settings (PaddleDetection #5976). `workspace.ppdet_scope` gives each build its
  own config and restores the global one afterwards.
- `ppdet.modeling.ops.multiclass_nms` builds its op with the legacy static-graph LayerHelper outside
  dygraph, which Paddle 3's static graph (PIR) refuses (`TypeError ... multiclass_nms3 should be one of
  [str, bytes, Variable]`), so `paddle.jit.save` of any model with NMS failed. Outside dygraph it now
  calls the same kernel through `paddle._C_ops.multiclass_nms3`.
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
        _PPDET = ppdet
    return _PPDET


def _patch_multiclass_nms():
    import paddle
    from ppdet.modeling import ops
    original = ops.multiclass_nms

    def multiclass_nms(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold=0.3,
                       normalized=True, nms_eta=1., background_label=-1, return_index=False,
                       return_rois_num=True, rois_num=None, name=None):
        if paddle.in_dynamic_mode():
            return original(bboxes, scores, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
                            nms_eta, background_label, return_index, return_rois_num, rois_num, name)
        out, index, nms_rois_num = paddle._C_ops.multiclass_nms3(
            bboxes, scores, rois_num, score_threshold, nms_top_k, keep_top_k, nms_threshold, normalized,
            nms_eta, background_label)
        return out, (nms_rois_num if return_rois_num else None), (index if return_index else None)

    ops.multiclass_nms = multiclass_nms
