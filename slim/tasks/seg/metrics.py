"""Segmentation metrics from a confusion matrix, with PaddleSeg's definitions.

For each class c: intersect = pixels predicted c and labelled c, pred_area = predicted c,
label_area = labelled c (pixels labelled ignore_index are left out of all three).
    IoU_c = intersect / (pred_area + label_area - intersect)      mIoU = mean over classes
    Acc   = sum(intersect) / sum(label_area)                      class Acc_c = intersect / pred_area
    Kappa = (po - pe) / (1 - pe), po = Acc, pe = sum(pred_area * label_area) / total^2
    Dice_c = 2 * intersect / (pred_area + label_area)             Dice = mean over classes
A class absent from both prediction and label has IoU and Dice 0, as in PaddleSeg.
"""
from collections import OrderedDict

import numpy as np


class ConfusionMatrix:
    def __init__(self, num_classes, ignore_index=255):
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [label, pred]
        self.images = 0

    def update(self, pred, label):
        """pred, label: integer arrays of equal shape (any batch layout)."""
        pred, label = np.asarray(pred).reshape(-1), np.asarray(label).reshape(-1)
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.size} pixels, label {label.size}")
        keep = label != self.ignore_index
        pred, label = pred[keep].astype(np.int64), label[keep].astype(np.int64)
        bad = (label < 0) | (label >= self.num_classes)
        if bad.any():
            values = sorted(set(np.unique(label[bad]).tolist()))[:5]
            raise ValueError(f"label values {values} are outside [0, {self.num_classes - 1}] and are not "
                             f"ignore_index ({self.ignore_index}); check num_classes and the label images.")
        self.matrix += np.bincount(label * self.num_classes + pred,
                                   minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

    def areas(self):
        intersect = np.diag(self.matrix).astype(np.float64)
        return intersect, self.matrix.sum(0).astype(np.float64), self.matrix.sum(1).astype(np.float64)

    def metrics(self):
        intersect, pred_area, label_area = self.areas()
        union = pred_area + label_area - intersect
        class_iou = np.where(union > 0, intersect / np.maximum(union, 1), 0.0)
        class_acc = np.where(pred_area > 0, intersect / np.maximum(pred_area, 1), 0.0)
        total = label_area.sum()
        acc = intersect.sum() / total if total else 0.0
        pe = (pred_area * label_area).sum() / (total * total) if total else 0.0
        kappa = (acc - pe) / (1 - pe) if pe != 1 else 0.0
        denom = pred_area + label_area
        class_dice = np.where(denom > 0, 2 * intersect / np.maximum(denom, 1), 0.0)
        return OrderedDict(mIoU=float(class_iou.mean()), Acc=float(acc), Kappa=float(kappa),
                           Dice=float(class_dice.mean()), class_IoU=class_iou.tolist(),
                           class_Acc=class_acc.tolist())


def eval_lines(metrics, images):
    """PaddleSeg's eval log lines."""
    return [f"[EVAL] #Images: {images} mIoU: {metrics['mIoU']:.4f} Acc: {metrics['Acc']:.4f} "
            f"Kappa: {metrics['Kappa']:.4f} Dice: {metrics['Dice']:.4f}",
            "[EVAL] Class IoU: " + str(np.round(np.asarray(metrics["class_IoU"]), 4)),
            "[EVAL] Class Precision: " + str(np.round(np.asarray(metrics["class_Acc"]), 4))]
