"""Connectors: small trainable layers that map a student tensor to the teacher's shape.

    align: {type: 1x1conv}                 # channels inferred from the first batch
    align: {type: 3x3conv, bn: true, in_channels: 128, out_channels: 512}
    align: {type: linear}                  # acts on the last axis, for (N, C) or (N, L, C) tensors
    align: {type: resize, resize: teacher} # no weights; resize the teacher map to the student's H, W
    align: {teacher: tokens_to_map, type: 1x1conv}   # ViT tokens (N, L, D) as a map first (tokens.py)

Convolutions act on axis 1 of (N, C, H, W) maps. When H, W still differ after the connector, the side
named by `resize` (default: the student) is resized bilinearly to the other's size.
Connectors belong to the distiller, not to the student: they are saved beside the student weights.
"""
import paddle.nn as nn
import paddle.nn.functional as F

from .errors import ShapeMismatchError


class Connector(nn.Layer):
    def __init__(self, kind, in_channels, out_channels, bn=False):
        super().__init__()
        self.kind, self.in_channels, self.out_channels = kind, in_channels, out_channels
        if kind == "linear":
            self.proj = nn.Linear(in_channels, out_channels)
            self.norm = nn.BatchNorm1D(out_channels) if bn else None
        else:
            kernel = 1 if kind == "1x1conv" else 3
            self.proj = nn.Conv2D(in_channels, out_channels, kernel, padding=kernel // 2)
            self.norm = nn.BatchNorm2D(out_channels) if bn else None

    def check_input(self, x, pair):
        channels = x.shape[-1] if self.kind == "linear" else (x.shape[1] if x.ndim == 4 else None)
        if channels != self.in_channels:
            raise ShapeMismatchError(
                f"{pair.describe()}: the {self.kind} connector expects {self.in_channels} student channels "
                f"but the student tensor has shape {list(x.shape)}. Fix `align.in_channels` (or leave it "
                f"out to infer it from the first batch).")

    def forward(self, x):
        x = self.proj(x)
        if self.norm is None:
            return x
        if self.kind == "linear" and x.ndim == 3:  # BatchNorm1D wants channels on axis 1
            return self.norm(x.transpose([0, 2, 1])).transpose([0, 2, 1])
        return self.norm(x)


def connector_channels(kind, student, teacher, align, pair):
    """(in_channels, out_channels) from the align config, else from the tensors."""
    if align.get("in_channels") and align.get("out_channels"):
        return align["in_channels"], align["out_channels"]
    if kind == "linear":
        in_c, out_c = student.shape[-1], teacher.shape[-1]
    else:
        if student.ndim != 4 or teacher.ndim != 4:
            raise ShapeMismatchError(
                f"{pair.describe()}: a {kind} connector needs (N, C, H, W) maps, got student "
                f"{list(student.shape)} and teacher {list(teacher.shape)}; use `align: {{type: linear}}` "
                f"for (N, C) or (N, L, C) tensors, or turn transformer tokens into a map first with "
                f"`align: {{student: tokens_to_map}}` / `{{teacher: tokens_to_map}}` (slim/distill/tokens.py).")
        in_c, out_c = student.shape[1], teacher.shape[1]
    return align.get("in_channels") or in_c, align.get("out_channels") or out_c


def build_connector(align, student, teacher, pair):
    kind = align["type"]
    if kind == "resize":
        return None
    in_c, out_c = connector_channels(kind, student, teacher, align, pair)
    return Connector(kind, int(in_c), int(out_c), bn=align["bn"])


def resize_to(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def match_spatial(student, teacher, align):
    """Resize one side of two (N, C, H, W) maps so H, W agree, as `align.resize` says."""
    if student.ndim != 4 or teacher.ndim != 4 or student.shape[2:] == teacher.shape[2:]:
        return student, teacher
    side = align.get("resize") if align else None
    if side == "student":
        return resize_to(student, teacher.shape[2:]), teacher
    if side == "teacher":
        return student, resize_to(teacher, student.shape[2:])
    return student, teacher


class ConnectorSet(nn.Layer):
    """All connectors of a distiller, keyed by pair, applied in one call (so DataParallel sees them)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.LayerDict()

    def forward(self, features):
        return {key: self.layers[key](x) for key, x in features.items()}

    def __contains__(self, key):
        return key in self.layers

    def add(self, key, layer):
        self.layers[key] = layer


def connector_key(index):
    return f"pair{index}"

