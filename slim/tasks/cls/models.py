"""Classification models that expose their embedding and their classifier.

Every model of this registry is a `Classifier`:

    image -> backbone -> [neck] -> [projection] -> embedding -> head -> logits

- `forward(x)` returns the logits (N, num_classes), one tensor: `distill_loss` reads them as `$output`.
- `embedding` is an identity sublayer whose output is the vector the head classifies (N, D): name it in
  a `distill:` pair (`student: embedding, teacher: embedding`) and a forward hook captures it.
  `model.embed(x)` returns it directly (evaluation, retrieval); `forward(x) == head(embed(x))`.
- `head` is the classifier, a `paddle.nn.Linear(D, num_classes)`; `head_from_teacher: true` copies the
  teacher's into the student and freezes it.
- `neck` (when `embedding_dim` is given) is Linear + BatchNorm1D + ReLU from the backbone's features to
  `embedding_dim`: the way to widen a model's embedding (landmark-recognition distillation widens ResNet12 and Swin-tiny students to 1024).
- `projection` (the student config's top-level `embedding_projection`) is a Linear from the model's own
  embedding to the teacher's width; it is part of the model, saved in its model.pdparams and exported
  with it. `embedding_projection: true` takes the width from the teacher at distillation time and from
  the weights when they are loaded later; an integer fixes it.

Types (`model.type`):

| type | for | arguments |
| --- | --- | --- |
| `ConvNet` | 28-32 px images | `channels` (one conv-BN-ReLU stage each, 2x2 max-pool after each), `convs_per_stage`, `pool` (`avg` = global average, or an int k = k x k max-pool then flatten), `embedding_dim`, `in_channels` |
| `MLP` | small fixed-size images | `hidden` (widths of Linear-BN-ReLU layers), `input_size` (28 or [w, h]), `in_channels` |
| `SmallResNet` | 28-32 px images | `depth` (6n+2: 8, 14, 20, ...), `widths` (3 stages, default [16, 32, 64]), `embedding_dim`, `in_channels` (CIFAR-style ResNet) |
| `ResNet18`, `ResNet34`, `ResNet50`, `MobileNetV2`, `MobileNetV3Small`, `MobileNetV3Large` | `paddle.vision.models` | `scale` (MobileNets), `small_input: true` (ResNets: 3x3 stride-1 stem, no max-pool, for 32 px), `embedding_dim` |
| `ViT`, `DeiT` | PaddleClas's VisionTransformer / DistilledVisionTransformer (vit.py) | `input_size`, `patch_size`, `embed_dim`, `depth`, `num_heads`, `mlp_ratio`, `in_channels`; DeiT adds a distillation token and `head_dist` |

All take `num_classes` (required) and `embedding_dim` (optional).
"""
import copy

import paddle
import paddle.nn as nn

from slim.distill.errors import ConfigError, build_registered
from .vit import build_distilled_classifier, vit_backbone


class Classifier(nn.Layer):
    """backbone (N, C, H, W) -> (N, F); then neck, projection, embedding marker and head."""

    def __init__(self, backbone, feat_dim, num_classes, embedding_dim=None, projection_dim=None,
                 projection_requested=False):
        super().__init__()
        if num_classes is None or int(num_classes) < 1:
            raise ConfigError(f"model.num_classes must be a positive number of classes, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.feat_dim = int(feat_dim)
        self.backbone = backbone
        if embedding_dim:
            self.neck = nn.Sequential(nn.Linear(self.feat_dim, int(embedding_dim)), nn.BatchNorm1D(int(embedding_dim)),
                                      nn.ReLU())
            self.embedding_dim = int(embedding_dim)
        else:
            self.neck = None
            self.embedding_dim = self.feat_dim
        self.projection = None
        self.embedding = nn.Identity()
        self.head = nn.Linear(self.embedding_dim, self.num_classes)
        #: `embedding_projection` was asked for (its width may still be unknown: set_projection sizes it)
        self.projection_requested = bool(projection_requested or projection_dim)
        if projection_dim:
            self.set_projection(projection_dim)

    @property
    def head_in_dim(self):
        """Width of the vector the classifier reads (the embedding, after the projection if any)."""
        return int(self.head.weight.shape[0])

    def set_projection(self, out_dim):
        """Add (or resize) the Linear projection to `out_dim`; the head is rebuilt to read `out_dim`."""
        out_dim = int(out_dim)
        if self.projection is not None and int(self.projection.weight.shape[1]) == out_dim:
            return
        self.projection = nn.Linear(self.embedding_dim, out_dim)
        self.head = nn.Linear(out_dim, self.num_classes)

    def embed(self, x):
        f = self.backbone(x)
        if self.neck is not None:
            f = self.neck(f)
        if self.projection is not None:
            f = self.projection(f)
        return self.embedding(f)

    def forward(self, x):
        return self.head(self.embed(x))


def _conv_bn_relu(cin, cout, stride=1):
    return [nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias_attr=False), nn.BatchNorm2D(cout), nn.ReLU()]


class ConvNetBackbone(nn.Layer):
    def __init__(self, channels=(32, 64, 128), convs_per_stage=1, pool="avg", in_channels=3):
        super().__init__()
        if not channels:
            raise ConfigError("ConvNet needs at least one stage: model.channels: [32, 64, 128]")
        layers, cin = [], int(in_channels)
        for c in channels:
            for _ in range(int(convs_per_stage)):
                layers += _conv_bn_relu(cin, int(c))
                cin = int(c)
            layers.append(nn.MaxPool2D(2, 2))
        self.features = nn.Sequential(*layers)
        if pool == "avg":
            self.pool, self.out_dim = nn.AdaptiveAvgPool2D(1), cin
        elif isinstance(pool, int) and not isinstance(pool, bool) and pool > 0:
            self.pool, self.out_dim = nn.AdaptiveMaxPool2D(pool), cin * pool * pool
        else:
            raise ConfigError(f"ConvNet pool must be 'avg' or a positive int k (k x k max-pool, then flatten), "
                              f"got {pool!r}")
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.pool(self.features(x)))


class BasicBlock(nn.Layer):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2D(cin, cout, 3, stride=stride, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(cout)
        self.conv2 = nn.Conv2D(cout, cout, 3, padding=1, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(cout)
        self.relu = nn.ReLU()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2D(cin, cout, 1, stride=stride, bias_attr=False), nn.BatchNorm2D(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class SmallResNetBackbone(nn.Layer):
    """CIFAR-style ResNet (He et al. 2016, section 4.2): 3x3 stem, 3 stages of n basic blocks, depth 6n+2."""

    def __init__(self, depth=8, widths=(16, 32, 64), in_channels=3):
        super().__init__()
        if (int(depth) - 2) % 6 or int(depth) < 8:
            raise ConfigError(f"SmallResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 3:
            raise ConfigError(f"SmallResNet widths must list 3 stage widths, got {widths!r}")
        n = (int(depth) - 2) // 6
        self.stem = nn.Sequential(*_conv_bn_relu(int(in_channels), int(widths[0])))
        blocks, cin = [], int(widths[0])
        for stage, w in enumerate(widths):
            for b in range(n):
                blocks.append(BasicBlock(cin, int(w), 2 if stage > 0 and b == 0 else 1))
                cin = int(w)
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.flatten = nn.Flatten()
        self.out_dim = cin

    def forward(self, x):
        return self.flatten(self.pool(self.stages(self.stem(x))))


class VisionBackbone(nn.Layer):
    """A `paddle.vision.models` network without its classifier, pooled and flattened."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.flatten = nn.Flatten()

    def forward(self, x):
        return self.flatten(self.net(x))


def _feature_width(backbone, in_channels):
    training = backbone.training
    backbone.eval()
    try:
        with paddle.no_grad():
            out = backbone(paddle.zeros([1, int(in_channels), 64, 64]))
    finally:
        if training:
            backbone.train()
    return int(out.shape[-1])


class MLPBackbone(nn.Layer):
    """Flattened pixels -> Linear-BN-ReLU layers (fixed input size)."""

    def __init__(self, hidden=(256,), input_size=28, in_channels=3):
        super().__init__()
        if not hidden:
            raise ConfigError("MLP needs at least one hidden layer: model.hidden: [256]")
        w, h = (input_size, input_size) if isinstance(input_size, int) else input_size
        self.input_shape = [int(in_channels), int(h), int(w)]
        layers, cin = [nn.Flatten()], int(in_channels) * int(h) * int(w)
        for width in hidden:
            layers += [nn.Linear(cin, int(width)), nn.BatchNorm1D(int(width)), nn.ReLU()]
            cin = int(width)
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        shape = list(x.shape[1:])
        if all(d > 0 for d in shape) and shape != self.input_shape:
            raise ConfigError(f"MLP takes {self.input_shape} (C, H, W) inputs, got {list(x.shape[1:])}: set "
                              f"model.input_size / in_channels, or Resize the images.")
        return self.layers(x)


def _vision(factory_name, resnet=False):
    def build(in_channels=3, small_input=False, **kwargs):
        from paddle.vision import models
        net = getattr(models, factory_name)(num_classes=0, with_pool=True, **kwargs)
        if small_input:
            if not resnet:
                raise ConfigError(f"small_input is available for the ResNets only, not {factory_name}")
            net.conv1 = nn.Conv2D(int(in_channels), 64, 3, stride=1, padding=1, bias_attr=False)
            net.maxpool = nn.Identity()
        elif int(in_channels) != 3:
            raise ConfigError(f"{factory_name} takes 3-channel images; read images as RGB (the default "
                              f"`color: rgb` of the datasets) or use ConvNet / SmallResNet with in_channels.")
        backbone = VisionBackbone(net)
        return backbone, _feature_width(backbone, in_channels)
    return build


def _own(backbone_class):
    def build(**kwargs):
        backbone = backbone_class(**kwargs)
        return backbone, backbone.out_dim
    return build


#: model type -> function(**backbone kwargs) -> (backbone layer, feature width)
BACKBONES = {
    "ConvNet": _own(ConvNetBackbone),
    "SmallResNet": _own(SmallResNetBackbone),
    "MLP": _own(MLPBackbone),
    "ResNet18": _vision("resnet18", resnet=True),
    "ResNet34": _vision("resnet34", resnet=True),
    "ResNet50": _vision("resnet50", resnet=True),
    "MobileNetV2": _vision("mobilenet_v2"),
    "MobileNetV3Small": _vision("mobilenet_v3_small"),
    "MobileNetV3Large": _vision("mobilenet_v3_large"),
    "ViT": vit_backbone,
}
#: model types that are not a Classifier (their own Layer): type -> function(model_cfg) -> model
OTHER_MODELS = {"DeiT": build_distilled_classifier}

#: model type -> (paddle.vision.models module, its model_urls key; {scale} filled from model.scale)
_VISION_WEIGHTS = {
    "ResNet18": ("resnet", "resnet18"), "ResNet34": ("resnet", "resnet34"), "ResNet50": ("resnet", "resnet50"),
    "MobileNetV2": ("mobilenetv2", "mobilenetv2_{scale}"),
    "MobileNetV3Small": ("mobilenetv3", "mobilenet_v3_small_x{scale}"),
    "MobileNetV3Large": ("mobilenetv3", "mobilenet_v3_large_x{scale}"),
}


def vision_weights_url(model_cfg):
    """The ImageNet weights URL paddle.vision uses for `pretrained=True` of this model type."""
    import importlib
    kind = model_cfg.get("type")
    if kind not in _VISION_WEIGHTS:
        raise ConfigError(f"model.pretrained: true loads paddle.vision's ImageNet weights, which exist for "
                          f"{', '.join(_VISION_WEIGHTS)} only, not {kind!r}. Give a weights file (or URL) instead.")
    module, key = _VISION_WEIGHTS[kind]
    key = key.format(scale=float(model_cfg.get("scale", 1.0)))
    urls = importlib.import_module(f"paddle.vision.models.{module}").model_urls
    if key not in urls:
        raise ConfigError(f"model.pretrained: true: paddle.vision publishes no ImageNet weights for {key} "
                          f"(it has {', '.join(sorted(urls))}). Set model.pretrained to false or to a file.")
    return urls[key][0]


#: keys of `model:` that are not constructor arguments of the backbone
_MODEL_KEYS = ("type", "num_classes", "embedding_dim", "pretrained", "name")


def is_cls_model(type_name):
    return type_name in BACKBONES or type_name in OTHER_MODELS


def build_classifier(model_cfg, projection=None):
    """A `Classifier` from the `model:` section; `projection` is the top-level `embedding_projection`
    (None/false: none; an int: that width; true: sized later from the teacher or from loaded weights)."""
    cfg = copy.deepcopy(dict(model_cfg or {}))
    if is_cls_model(cfg.get("type")) and cfg.get("num_classes") is None:
        raise ConfigError(f"model.num_classes is missing: set it to the number of classes of the data "
                          f"(e.g. num_classes: 10 for MNIST).")
    if cfg.get("type") in OTHER_MODELS:
        if projection:
            raise ConfigError(f"embedding_projection is available for Classifier models, not {cfg['type']}")
        return OTHER_MODELS[cfg["type"]](cfg)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k not in _MODEL_KEYS}
    backbone, feat_dim = build_registered(BACKBONES, cfg.get("type"), kwargs, "classification model type")
    if isinstance(projection, bool) or projection is None:
        projection_dim = None
    else:
        try:
            projection_dim = int(projection)
        except (TypeError, ValueError):
            raise ConfigError(f"embedding_projection must be true, false or a width (int), got {projection!r}") from None
    return Classifier(backbone, feat_dim, cfg["num_classes"], cfg.get("embedding_dim"), projection_dim,
                      projection_requested=projection is True)


def adapt_to_state(model, state):
    """Size an unsized projection (`embedding_projection: true`) from weights that hold one."""
    weight = state.get("projection.weight") if isinstance(state, dict) else None
    if isinstance(model, Classifier) and model.projection_requested and weight is not None and hasattr(weight, "shape"):
        model.set_projection(int(weight.shape[1]))
