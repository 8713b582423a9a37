"""Vision transformers for the classification task, built from PaddleClas's own classes (ppcls.arch.backbone).

    model: {type: ViT, input_size: 28, patch_size: 4, embed_dim: 64, depth: 4, num_heads: 4, mlp_ratio: 2,
            in_channels: 1, num_classes: 10}
    model: {type: DeiT, input_size: 28, patch_size: 4, embed_dim: 64, depth: 4, num_heads: 4, ...}

- `ViT`: PaddleClas's `VisionTransformer` (class token, learned position embeddings, pre-norm blocks) without
  its classifier, as the backbone of a `Classifier`: the embedding is the class token after the final norm.
  Its blocks (`backbone.blocks.3`) return (N, 1 + h*w, D) tokens: pair them with a CNN map through
  `align: {student: tokens_to_map}` (slim/distill/tokens.py).
- `DeiT`: PaddleClas's `DistilledVisionTransformer` (a class token and DeiT's distillation token), each token
  read by its own classifier: `head` and `head_dist` (`DistilledClassifier`). In training the model returns
  both heads' logits (`TwoHeads`); in evaluation, their average (DeiT's inference, and PaddleClas's). Trained
  alone, the task's loss reads the average (as PaddleClas trains it); with `distill_token` (a teacher), the class
  head learns the labels and `head_dist` the teacher (slim/distill/distill_token.py).

Arguments: input_size (one int: the square image side the position embeddings are made for), patch_size,
embed_dim, depth, num_heads, mlp_ratio, qkv_bias (default true), drop_rate, attn_drop_rate, drop_path_rate,
in_channels, num_classes. Weights start as PaddleClas initialises them (truncated normal, std 0.02).
"""
from collections import namedtuple

import paddle.nn as nn

from slim.distill.errors import ConfigError

VIT_TYPES = ("ViT", "DeiT")

#: a DeiT model's training output: the class head's logits and the distillation head's
TwoHeads = namedtuple("TwoHeads", ["cls", "dist"])


def _ppcls_class(distilled):
    from slim.tasks.ppcls.arch import import_ppcls
    import_ppcls()
    if distilled:
        from ppcls.arch.backbone.model_zoo.distilled_vision_transformer import DistilledVisionTransformer
        return DistilledVisionTransformer
    from ppcls.arch.backbone.model_zoo.vision_transformer import VisionTransformer
    return VisionTransformer


def build_vit(distilled=False, input_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
              qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, in_channels=3):
    """PaddleClas's (Distilled)VisionTransformer without classifiers (class_num 0)."""
    if not isinstance(input_size, int) or isinstance(input_size, bool):
        raise ConfigError(f"ViT/DeiT input_size must be one int (square images), got {input_size!r}")
    if input_size % int(patch_size):
        raise ConfigError(f"ViT/DeiT input_size {input_size} is not a multiple of patch_size {patch_size}; the "
                          f"patch grid must cover the image.")
    if int(embed_dim) % int(num_heads):
        raise ConfigError(f"ViT/DeiT embed_dim {embed_dim} must be a multiple of num_heads {num_heads}")
    return _ppcls_class(distilled)(
        img_size=int(input_size), patch_size=int(patch_size), in_chans=int(in_channels), class_num=0,
        embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads), mlp_ratio=float(mlp_ratio),
        qkv_bias=bool(qkv_bias), drop_rate=float(drop_rate), attn_drop_rate=float(attn_drop_rate),
        drop_path_rate=float(drop_path_rate), epsilon=1e-6)


def vit_backbone(**kwargs):
    """The `ViT` entry of the backbone registry: (backbone, embedding width)."""
    net = build_vit(False, **kwargs)
    return net, int(net.embed_dim)


class DistilledClassifier(nn.Layer):
    """DeiT (Touvron et al., ICML 2021): a class token read by `head`, a distillation token read by `head_dist`.

    forward(x): training -> TwoHeads(cls=head(class token), dist=head_dist(distillation token));
                evaluation -> (cls + dist) / 2.
    `embedding` marks the class token's features (N, D) for `distill:` pairs and retrieval."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        if num_classes is None or int(num_classes) < 1:
            raise ConfigError(f"model.num_classes must be a positive number of classes, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.backbone = backbone
        self.embedding_dim = int(backbone.embed_dim)
        self.embedding = nn.Identity()
        self.head = nn.Linear(self.embedding_dim, self.num_classes)
        self.head_dist = nn.Linear(self.embedding_dim, self.num_classes)
        for head in (self.head, self.head_dist):  # as PaddleClas initialises its heads
            backbone._init_weights(head)

    def _tokens(self, x):
        cls_token, dist_token = self.backbone.forward_features(x)
        return self.embedding(cls_token), dist_token

    def embed(self, x):
        return self._tokens(x)[0]

    def forward(self, x):
        cls_token, dist_token = self._tokens(x)
        heads = TwoHeads(self.head(cls_token), self.head_dist(dist_token))
        return heads if self.training else (heads.cls + heads.dist) / 2

    def logits_and_embedding(self, x):
        """(DeiT's logits: the average of the two heads, the class token's features)."""
        cls_token, dist_token = self._tokens(x)
        return (self.head(cls_token) + self.head_dist(dist_token)) / 2, cls_token


def build_distilled_classifier(model_cfg):
    """A `DistilledClassifier` from `model: {type: DeiT, ...}`."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in ("type", "num_classes", "pretrained", "name")}
    if kwargs.pop("embedding_dim", None):
        raise ConfigError("model.embedding_dim (a neck) is not available for DeiT; its embedding is the class token")
    try:
        backbone = build_vit(True, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model (DeiT) could not be built from {sorted(kwargs)}: {e}") from None
    return DistilledClassifier(backbone, model_cfg.get("num_classes"))


def output_logits(output, class_head_only=False):
    """The logits a loss reads from a model's training output: a DeiT model's class head (class_head_only), or
    the average of its two heads (PaddleClas's training of a DeiT model alone); any other output as it is."""
    if isinstance(output, TwoHeads):
        return output.cls if class_head_only else (output.cls + output.dist) / 2
    return output
