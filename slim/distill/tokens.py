"""Transformer tokens and CNN maps in one pair: weightless conversions applied before a pair's connector.

A ViT or Swin layer returns tokens (N, L, D); a CNN layer a map (N, C, H, W). A pair converts either side
with `align.student` / `align.teacher`, then the usual connector (`type`) and resizing act on the results:

    distill:
      - student: features.5                  # CNN map (N, 32, 7, 7)
        teacher: backbone.blocks.3            # ViT tokens (N, 1 + 7*7, 64)
        loss: L2Loss
        align: {teacher: tokens_to_map, type: 1x1conv}     # the map of patch tokens (N, 64, 7, 7)
      - student: backbone.blocks.3            # ViT student tokens against a CNN teacher map
        teacher: features.8
        loss: {type: SegChannelwiseLoss, tau: 4}
        align: {student: tokens_to_map, type: 1x1conv, resize: student}
      - student: embedding                    # the student's (N, D_s) embedding against the teacher's CLS token
        teacher: backbone.blocks.3
        loss: L2Loss
        align: {teacher: cls_token, type: linear}
      - student: features.5                   # a map as tokens against the ViT's patch tokens
        teacher: backbone.blocks.3
        loss: L2Loss
        align: {student: map_to_tokens, teacher: patch_tokens, type: linear}

Conversions (each a name, or a dict with its arguments: `{type: tokens_to_map, skip: 2, grid: [7, 7]}`):

| conversion | input | output |
| --- | --- | --- |
| tokens_to_map | (N, L, D) | (N, D, h, w): the first `skip` tokens (class, distillation) dropped, the h*w patch tokens laid out row by row, as PatchEmbed flattened its (N, D, h, w) convolution |
| patch_tokens | (N, L, D) | (N, h*w, D): the first `skip` tokens dropped |
| map_to_tokens | (N, C, H, W) | (N, H*W, C), row by row (the inverse of tokens_to_map with skip 0) |
| cls_token | (N, L, D) | (N, D): token `index` (0: the class token; 1: DeiT's distillation token) |

`skip` and `grid` default to what the token count allows: the fewest leading tokens (0, 1 or 2) that leave a
square number of patch tokens (ViT: 1 + 7*7 -> skip 1, 7x7; DeiT: 2 + 7*7 -> skip 2; Swin: 7*7 -> skip 0).
A non-square patch grid (an input that is not square) needs `grid: [h, w]`.

After a conversion the feature losses see ordinary tensors: maps for CWD, PKD, MGD and AT, anything of equal
shape for MSE. `token_grid` (list_layers, --suggest) reads a patch grid and its stride from a token count and
the input size.
"""
import math
from typing import Optional, Sequence, Tuple

import paddle

from .errors import ConfigError, ShapeMismatchError

CONVERSIONS = ("tokens_to_map", "patch_tokens", "map_to_tokens", "cls_token")
_ARGS = {"tokens_to_map": {"skip", "grid"}, "patch_tokens": {"skip", "grid"}, "map_to_tokens": set(),
         "cls_token": {"index"}}
#: leading non-patch tokens a model may carry (class, distillation)
MAX_SPECIAL_TOKENS = 2


def parse_conversion(value, pair_name: str = "?", side: str = "student") -> Optional[dict]:
    """`align.student` / `align.teacher` -> {type, ...arguments} or None."""
    if value in (None, False, "none"):
        return None
    spec = {"type": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else None
    if spec is None or spec.get("type") not in CONVERSIONS:
        raise ConfigError(f"Pair {pair_name!r}: align.{side} must be one of {', '.join(CONVERSIONS)} (or a dict "
                          f"{{type: tokens_to_map, skip: 1, grid: [7, 7]}}), got {value!r}.")
    unknown = set(spec) - {"type"} - _ARGS[spec["type"]]
    if unknown:
        raise ConfigError(f"Pair {pair_name!r}: align.{side} {spec['type']} takes "
                          f"{', '.join(sorted(_ARGS[spec['type']])) or 'no arguments'}, not {sorted(unknown)}.")
    if spec.get("skip") is not None and not (isinstance(spec["skip"], int) and 0 <= spec["skip"]):
        raise ConfigError(f"Pair {pair_name!r}: align.{side}.skip must be an integer >= 0, got {spec['skip']!r}")
    grid = spec.get("grid")
    if grid is not None:
        if not (isinstance(grid, (list, tuple)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
            raise ConfigError(f"Pair {pair_name!r}: align.{side}.grid must be [h, w] (positive integers), got {grid!r}")
        spec["grid"] = [int(g) for g in grid]
    if spec.get("index") is not None and not isinstance(spec["index"], int):
        raise ConfigError(f"Pair {pair_name!r}: align.{side}.index must be an integer, got {spec['index']!r}")
    return spec


def _square_side(n: int) -> Optional[int]:
    side = int(round(math.sqrt(n))) if n > 0 else 0
    return side if side > 0 and side * side == n else None


def patch_grid(num_tokens: int, skip: Optional[int] = None, grid: Optional[Sequence[int]] = None,
               where: str = "tokens") -> Tuple[int, int, int]:
    """(skip, h, w) of a sequence of `num_tokens` tokens: given values checked, missing ones inferred."""
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        skip = num_tokens - h * w if skip is None else int(skip)
        if skip < 0 or skip + h * w != num_tokens:
            raise ShapeMismatchError(f"{where}: {num_tokens} tokens are not {skip if skip >= 0 else '?'} leading "
                                     f"token(s) + a {h}x{w} patch grid; fix `grid` (and `skip`).")
        return skip, h, w
    candidates = [int(skip)] if skip is not None else range(MAX_SPECIAL_TOKENS + 1)
    for k in candidates:
        side = _square_side(num_tokens - k)
        if side:
            return k, side, side
    told = f"after skipping {skip} token(s) " if skip is not None else "after 0, 1 or 2 leading tokens "
    raise ShapeMismatchError(f"{where}: {num_tokens} tokens leave no square patch grid {told}; give the grid "
                             f"as `{{type: tokens_to_map, grid: [h, w], skip: k}}`.")


def _need_rank(x, rank, what, where):
    if x.ndim != rank:
        shape = "(N, L, D) tokens" if rank == 3 else "an (N, C, H, W) map"
        raise ShapeMismatchError(f"{where}: {what} needs {shape}, got shape {list(x.shape)}.")


def tokens_to_map(x: paddle.Tensor, skip: Optional[int] = None, grid: Optional[Sequence[int]] = None,
                  where: str = "tokens_to_map") -> paddle.Tensor:
    """(N, L, D) -> (N, D, h, w) of the patch tokens (the first `skip` dropped)."""
    _need_rank(x, 3, "tokens_to_map", where)
    k, h, w = patch_grid(int(x.shape[1]), skip, grid, where)
    n, d = x.shape[0], x.shape[2]
    return x[:, k:, :].reshape([n, h, w, d]).transpose([0, 3, 1, 2])


def patch_tokens(x: paddle.Tensor, skip: Optional[int] = None, grid: Optional[Sequence[int]] = None,
                 where: str = "patch_tokens") -> paddle.Tensor:
    """(N, L, D) -> (N, h*w, D): the class/distillation tokens dropped."""
    _need_rank(x, 3, "patch_tokens", where)
    k, _, _ = patch_grid(int(x.shape[1]), skip, grid, where)
    return x[:, k:, :]


def map_to_tokens(x: paddle.Tensor, where: str = "map_to_tokens") -> paddle.Tensor:
    """(N, C, H, W) -> (N, H*W, C), row by row."""
    _need_rank(x, 4, "map_to_tokens", where)
    return x.flatten(2).transpose([0, 2, 1])


def class_token(x: paddle.Tensor, index: int = 0, where: str = "cls_token") -> paddle.Tensor:
    """(N, L, D) -> (N, D): token `index`."""
    _need_rank(x, 3, "cls_token", where)
    if not -x.shape[1] <= index < x.shape[1]:
        raise ShapeMismatchError(f"{where}: token {index} of {x.shape[1]} tokens does not exist.")
    return x[:, index, :]


def convert(spec: Optional[dict], x: paddle.Tensor, where: str = "align") -> paddle.Tensor:
    """Apply one parsed conversion (None: x unchanged)."""
    if spec is None:
        return x
    kind = spec["type"]
    if kind == "tokens_to_map":
        return tokens_to_map(x, spec.get("skip"), spec.get("grid"), where)
    if kind == "patch_tokens":
        return patch_tokens(x, spec.get("skip"), spec.get("grid"), where)
    if kind == "map_to_tokens":
        return map_to_tokens(x, where)
    return class_token(x, int(spec.get("index") or 0), where)


def convert_pair(pair, students: list, teachers: list) -> Tuple[list, list]:
    """A pair's student and teacher tensors after its `align.student` / `align.teacher` conversions."""
    align = pair.align or {}
    specs = align.get("student"), align.get("teacher")
    if specs == (None, None):
        return students, teachers
    out = []
    for side, spec, tensors in (("student", specs[0], students), ("teacher", specs[1], teachers)):
        try:
            out.append([convert(spec, x) for x in tensors])
        except ShapeMismatchError as e:  # the pair is named only when something is wrong
            raise ShapeMismatchError(f"{pair.describe()}, {side} side: {e}") from None
    return out[0], out[1]


def token_grid(num_tokens: int, input_hw: Sequence[int]) -> Optional[dict]:
    """Where `num_tokens` tokens of a model fed an input of size `input_hw` lie: {skip, grid: (h, w), stride}
    for a patch grid of floor(H / s) x floor(W / s) tokens after 0-2 leading ones, else None. The smallest
    `skip`, then a stride that divides the input, wins."""
    height, width = int(input_hw[0]), int(input_hw[1])
    for k in range(MAX_SPECIAL_TOKENS + 1):
        patches = num_tokens - k
        if patches < 1:
            break
        # a grid of at least 2x2 (a 1x1 "grid" is a pooled vector, not a map)
        found = [s for s in range(1, min(height, width) // 2 + 1)
                 if (height // s) * (width // s) == patches and min(height // s, width // s) >= 2]
        if found:
            exact = [s for s in found if height % s == 0 and width % s == 0]
            s = (exact or found)[0]
            return {"skip": k, "grid": (height // s, width // s), "stride": s}
    return None


def shape_hint(student, teacher) -> Optional[str]:
    """The conversion that would make a token tensor and a map comparable, for a shape-mismatch message."""
    if student.ndim == 3 and teacher.ndim == 4:
        return ("the student gives tokens and the teacher a map: add `align: {student: tokens_to_map}` (then "
                "`type: 1x1conv` when the widths differ)")
    if student.ndim == 4 and teacher.ndim == 3:
        return ("the student gives a map and the teacher tokens: add `align: {teacher: tokens_to_map}` (then "
                "`type: 1x1conv` when the widths differ)")
    if student.ndim == 2 and teacher.ndim == 3:
        return "the teacher gives tokens: compare its class token with `align: {teacher: cls_token}`"
    if student.ndim == 3 and teacher.ndim == 2:
        return "the student gives tokens: compare its class token with `align: {student: cls_token}`"
    if student.ndim == 3 and teacher.ndim == 3 and student.shape[1] != teacher.shape[1]:
        return ("the token counts differ (class tokens, or patch grids of other sizes): drop the class tokens "
                "with `align: {student: patch_tokens, teacher: patch_tokens}`, or compare maps with "
                "`{student: tokens_to_map, teacher: tokens_to_map, resize: student}`")
    return None
