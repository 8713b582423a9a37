"""Detection metrics: Pascal VOC mAP@0.5 through ppdet's DetectionMAP, COCO through pycocotools.

VOC: ppdet's matching (IoU > 0.5, one detection per ground-truth box, `difficult` boxes ignored, VOC's
+1 pixel box size) and its 11-point or area ('integral') AP. The per-class AP is computed here from the
same matches: ppdet's own per-class table names classes by position among the classes that have ground
truth, which mislabels them when a class has none.
"""
import contextlib
import io
import math
from collections import OrderedDict

import numpy as np

from .compat import import_ppdet


def average_precision(score_pos, gt_count, map_type="11point"):
    """AP of one class from [(score, is_true_positive)] and its number of ground-truth boxes
    (the formulas of ppdet's DetectionMAP.accumulate)."""
    if gt_count == 0:
        return None
    if not score_pos:
        return 0.0
    order = sorted(score_pos, key=lambda sp: sp[0], reverse=True)
    tp = np.cumsum([p for _, p in order])
    fp = np.cumsum([1 - p for _, p in order])
    precision = tp / (tp + fp)
    recall = tp / float(gt_count)
    if map_type == "11point":
        max_precisions = [0.0] * 11
        start = len(precision) - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if recall[i] < j / 10.0:
                    start = i
                    if j > 0:
                        max_precisions[j - 1] = max_precisions[j]
                    break
                if max_precisions[j] < precision[i]:
                    max_precisions[j] = precision[i]
        return float(sum(max_precisions) / 11.0)
    ap, prev = 0.0, 0.0
    for p, r in zip(precision, recall):
        if math.fabs(r - prev) > 1e-6:
            ap += p * math.fabs(r - prev)
            prev = r
    return float(ap)


class VOCEvaluator:
    def __init__(self, names, map_type="11point", overlap_thresh=0.5, evaluate_difficult=False):
        import_ppdet()
        from ppdet.metrics.map_utils import DetectionMAP
        if map_type not in ("11point", "integral"):
            from slim.distill.errors import ConfigError
            raise ConfigError(f"map_type {map_type!r}: use 11point or integral (area under the PR curve).")
        self.names, self.map_type = list(names), map_type
        self.overlap_thresh = overlap_thresh
        self.detection_map = DetectionMAP(class_num=len(names), overlap_thresh=overlap_thresh, map_type=map_type,
                                          is_bbox_normalized=False, evaluate_difficult=evaluate_difficult,
                                          catid2name=dict(enumerate(names)), classwise=False)
        self.images = 0

    def update(self, pred, record):
        """pred: [M, 6] (label, score, x1, y1, x2, y2) in original image coordinates."""
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 6)
        pred = pred[pred[:, 0] >= 0]
        gt_box = np.asarray(record["gt_bbox"], dtype=np.float64).reshape(-1, 4)
        gt_label = np.asarray(record["gt_class"]).reshape(-1, 1)
        difficult = np.asarray(record.get("difficult", np.zeros_like(gt_label))).reshape(-1, 1)
        self.detection_map.update(pred[:, 2:6], pred[:, 1], pred[:, 0].astype(int), gt_box, gt_label, difficult)
        self.images += 1

    def result(self):
        dm = self.detection_map
        dm.accumulate()
        class_ap = OrderedDict()
        for name, score_pos, count in zip(self.names, dm.class_score_poss, dm.class_gt_counts):
            ap = average_precision(score_pos, count, self.map_type)
            if ap is not None:
                class_ap[name] = ap
        mean = float(dm.get_map())
        return OrderedDict([("mAP", mean), ("mAP50", mean), ("class_AP", class_ap),
                            ("map_type", self.map_type), ("images", self.images)])

    def lines(self, metrics):
        kind = "11-point" if self.map_type == "11point" else "area"
        out = [f"[EVAL] #Images: {metrics['images']} mAP@{self.overlap_thresh:g} (VOC, {kind}): "
               f"{metrics['mAP']:.4f}"]
        out.append("[EVAL] Class AP@0.5: " + ", ".join(f"{n} {ap:.4f}" for n, ap in metrics["class_AP"].items()))
        return out


class COCOEvaluator:
    """bbox AP through pycocotools' COCOeval on the dataset's own annotation file."""

    def __init__(self, anno_path, clsid2catid, names):
        self.anno_path, self.clsid2catid, self.names = anno_path, clsid2catid, list(names)
        self.results = []
        self.images = 0

    def update(self, pred, record):
        pred = np.asarray(pred, dtype=np.float64).reshape(-1, 6)
        image_id = int(np.asarray(record["im_id"]).reshape(-1)[0])
        for label, score, x1, y1, x2, y2 in pred:
            if label < 0:
                continue
            self.results.append({"image_id": image_id, "category_id": int(self.clsid2catid[int(label)]),
                                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                                 "score": float(score)})
        self.images += 1

    def result(self):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        keys = ["mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"]
        if not self.results:
            out = OrderedDict((k, 0.0) for k in keys)
            out["images"] = self.images
            return out
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(self.anno_path)
            dt = gt.loadRes(self.results)
            ev = COCOeval(gt, dt, "bbox")
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out = OrderedDict((k, float(max(v, 0.0))) for k, v in zip(keys, ev.stats[:6]))
        out["images"] = self.images
        return out

    def lines(self, metrics):
        return [f"[EVAL] #Images: {metrics['images']} bbox mAP@[.5:.95] (COCO): {metrics['mAP']:.4f} "
                f"mAP@0.5: {metrics['mAP50']:.4f} mAP@0.75: {metrics['mAP75']:.4f}"]
