"""Transformer tokens and CNN maps in one pair (slim/distill/tokens.py): each conversion against a NumPy reshape,
the layout against PaddleClas's own PatchEmbed, feature losses on converted tensors, list_layers and --suggest on
ViT and Swin models."""
import numpy as np
import paddle
import pytest

from slim.distill import Distiller, build_loss, format_layers, list_layers
from slim.distill.errors import ConfigError, ShapeMismatchError
from slim.distill.tokens import (class_token, map_to_tokens, patch_grid, patch_tokens, token_grid, tokens_to_map)


def np_tokens_to_map(x, skip, h, w):
    """The reference: drop `skip` leading tokens, lay the rest row by row on an h x w grid, channels first."""
    n, _, d = x.shape
    return x[:, skip:, :].reshape(n, h, w, d).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("skip, h, w, grid", [(1, 7, 7, None), (2, 4, 4, None), (0, 3, 3, None), (1, 2, 5, [2, 5])])
def test_tokens_to_map_and_patch_tokens_equal_a_numpy_reshape(skip, h, w, grid):
    x = np.random.RandomState(1).randn(3, skip + h * w, 6).astype("float32")
    got = tokens_to_map(paddle.to_tensor(x), grid=grid).numpy()
    np.testing.assert_array_equal(got, np_tokens_to_map(x, skip, h, w))
    np.testing.assert_array_equal(patch_tokens(paddle.to_tensor(x), grid=grid).numpy(), x[:, skip:, :])


def test_map_to_tokens_and_cls_token_equal_a_numpy_reshape():
    m = np.random.RandomState(2).randn(2, 5, 3, 4).astype("float32")
    tokens = map_to_tokens(paddle.to_tensor(m)).numpy()
    np.testing.assert_array_equal(tokens, m.reshape(2, 5, 12).transpose(0, 2, 1))
    back = tokens_to_map(paddle.to_tensor(tokens), skip=0, grid=[3, 4]).numpy()
    np.testing.assert_array_equal(back, m)
    x = np.random.RandomState(3).randn(2, 10, 4).astype("float32")
    np.testing.assert_array_equal(class_token(paddle.to_tensor(x)).numpy(), x[:, 0])
    np.testing.assert_array_equal(class_token(paddle.to_tensor(x), 1).numpy(), x[:, 1])


def ppcls_vit(input_size, patch_size, embed_dim, depth, num_heads, in_channels):
    from slim.tasks.ppcls.arch import import_ppcls
    import_ppcls()
    from ppcls.arch.backbone.model_zoo.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=input_size, patch_size=patch_size, in_chans=in_channels, class_num=0,
                             embed_dim=embed_dim, depth=depth, num_heads=num_heads)


def test_tokens_to_map_lays_patches_where_paddleclas_patch_embed_took_them():
    vit = ppcls_vit(input_size=12, patch_size=4, embed_dim=8, depth=1, num_heads=2, in_channels=1)
    x = paddle.randn([2, 1, 12, 12])
    tokens = vit.patch_embed(x)  # (N, 9, 8): the conv's (N, 8, 3, 3) output, flattened
    np.testing.assert_allclose(tokens_to_map(tokens).numpy(), vit.patch_embed.proj(x).numpy(), rtol=1e-6, atol=1e-6)


def test_grids_that_cannot_be_inferred_are_one_error_naming_grid():
    assert patch_grid(50) == (1, 7, 7) and patch_grid(51) == (2, 7, 7) and patch_grid(49) == (0, 7, 7)
    with pytest.raises(ShapeMismatchError, match=r"grid: \[h, w\]"):
        tokens_to_map(paddle.zeros([1, 13, 4]))  # 1 + 3x4: no square grid after 0-2 tokens
    with pytest.raises(ShapeMismatchError, match="not 1 leading"):
        patch_grid(50, skip=1, grid=[5, 5])
    with pytest.raises(ShapeMismatchError, match=r"\(N, L, D\) tokens"):
        tokens_to_map(paddle.zeros([1, 4, 3, 3]))
    with pytest.raises(ConfigError, match="align.teacher must be one of"):
        Distiller(_Tokens(paddle.zeros([1, 5, 2])), _Tokens(paddle.zeros([1, 5, 2])),
                  [{"student": "out", "teacher": "out", "loss": "L2Loss", "align": {"teacher": "tokens2map"}}])


class _Tokens(paddle.nn.Layer):
    """A model whose sublayer `out` returns a fixed tensor (tokens or a map)."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.out = paddle.nn.Identity()
        self.scale = paddle.create_parameter([1], "float32", default_initializer=paddle.nn.initializer.Constant(1.0))

    def forward(self, x):
        return self.out(self.value * self.scale)


LOSSES = [("L2Loss", {}), ("SegChannelwiseLoss", {"tau": 2.0}), ("PKDLoss", {}),
          ("MGDLoss", {"student_channels": 6, "teacher_channels": 6, "lambda_mgd": 0.5}), ("ATLoss", {})]


@pytest.mark.parametrize("loss, args", LOSSES)
def test_feature_losses_on_converted_tokens_equal_the_loss_on_numpy_reshaped_maps(loss, args):
    rng = np.random.RandomState(4)
    s_tokens = rng.randn(2, 1 + 16, 6).astype("float32")  # a ViT student: class token + 4x4 patches
    t_map = rng.randn(2, 6, 4, 4).astype("float32")  # a CNN teacher map of the same grid
    pair = {"name": "p", "student": "out", "teacher": "out", "loss": dict(args, type=loss),
            "align": {"student": "tokens_to_map"}}
    distiller = Distiller(_Tokens(paddle.to_tensor(s_tokens)), _Tokens(paddle.to_tensor(t_map)), [pair])
    reference_loss = build_loss(dict(args, type=loss))
    if loss == "MGDLoss":  # the same generator weights and the same mask draws on both sides
        reference_loss.set_state_dict(distiller.loss_fns[0].state_dict())
    paddle.seed(7)
    got = float(distiller(paddle.zeros([1])).losses["p"])
    paddle.seed(7)
    want = float(reference_loss(paddle.to_tensor(np_tokens_to_map(s_tokens, 1, 4, 4)), paddle.to_tensor(t_map)))
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert got > 0


def test_teacher_tokens_through_a_1x1_connector_and_the_class_token_through_a_linear_one():
    rng = np.random.RandomState(5)
    s_map = rng.randn(2, 3, 7, 7).astype("float32")
    t_tokens = rng.randn(2, 50, 8).astype("float32")
    pairs = [{"name": "map", "student": "out", "teacher": "out", "loss": "L2Loss",
              "align": {"teacher": "tokens_to_map", "type": "1x1conv"}},
             {"name": "cls", "student": "out", "teacher": "out", "loss": "L2Loss",
              "align": {"student": "map_to_tokens", "teacher": "patch_tokens", "type": "linear"}}]
    distiller = Distiller(_Tokens(paddle.to_tensor(s_map)), _Tokens(paddle.to_tensor(t_tokens)), pairs)
    distiller.build(paddle.zeros([1]))
    out = distiller(paddle.zeros([1]))
    conv = distiller.connectors.layers["pair0_0"].proj
    mapped = np.einsum("oc,nchw->nohw", conv.weight.numpy()[:, :, 0, 0], s_map) + conv.bias.numpy()[None, :, None, None]
    want = ((mapped - np_tokens_to_map(t_tokens, 1, 7, 7)) ** 2).mean()
    assert float(out.losses["map"]) == pytest.approx(float(want), rel=1e-5)
    linear = distiller.connectors.layers["pair1_0"].proj
    tokens = s_map.reshape(2, 3, 49).transpose(0, 2, 1) @ linear.weight.numpy() + linear.bias.numpy()
    assert float(out.losses["cls"]) == pytest.approx(float(((tokens - t_tokens[:, 1:]) ** 2).mean()), rel=1e-5)


def test_a_token_map_mismatch_names_the_conversion():
    distiller = Distiller(_Tokens(paddle.zeros([1, 50, 8])), _Tokens(paddle.zeros([1, 8, 7, 7])),
                          [{"name": "p", "student": "out", "teacher": "out", "loss": "L2Loss"}])
    with pytest.raises(ShapeMismatchError, match=r"align: \{student: tokens_to_map\}"):
        distiller(paddle.zeros([1]))


def test_token_grid_reads_the_patch_grid_and_its_stride():
    assert token_grid(50, (28, 28)) == {"skip": 1, "grid": (7, 7), "stride": 4}
    assert token_grid(198, (224, 224)) == {"skip": 2, "grid": (14, 14), "stride": 16}
    assert token_grid(49, (224, 224)) == {"skip": 0, "grid": (7, 7), "stride": 32}  # Swin's last stage
    assert token_grid(1 + 8 * 12, (128, 192)) == {"skip": 1, "grid": (8, 12), "stride": 16}
    assert token_grid(1, (28, 28)) is None  # a pooled vector is no grid


def test_list_layers_shows_the_patch_grid_of_vit_tokens():
    vit = ppcls_vit(input_size=28, patch_size=4, embed_dim=16, depth=2, num_heads=2, in_channels=1)
    rows = {r["name"]: r for r in list_layers(vit, paddle.randn([2, 1, 28, 28]))}
    assert rows["blocks.1"]["tokens"] == {"skip": 1, "grid": (7, 7), "stride": 4}
    assert rows["patch_embed"]["tokens"]["skip"] == 0
    assert "2x50x16 (1+7x7 tokens, stride 4)" in format_layers(list(rows.values()))


class _Task:
    """The part of a task --suggest uses, for models built here."""
    name = "cls"

    def __init__(self, build, size):
        self.build, self.size = build, size

    def build_model(self, cfg):
        paddle.seed(0)
        return self.build()

    def example_inputs(self, cfg, input_shape=None):
        return (paddle.randn(input_shape or [1, 3, self.size, self.size]),)

    def logits_ref(self, cfg):
        from slim.distill import LayerRef
        return LayerRef("$output")

    def prepare_teacher_config(self, cfg, teacher_cfg):
        return teacher_cfg


def test_suggest_pairs_swin_stages_with_a_cnn_by_patch_grid_stride():
    from slim.apps.suggest import suggest_pairs
    from slim.tasks.ppcls.arch import import_ppcls
    import_ppcls()
    from ppcls.arch.backbone.legendary_models.swin_transformer import SwinTransformer
    from paddle.vision.models import resnet18

    def swin():
        return SwinTransformer(img_size=64, patch_size=4, class_num=10, embed_dim=16, depths=[1, 1, 1],
                               num_heads=[2, 2, 2], window_size=4)

    pairs = suggest_pairs(_Task(lambda: resnet18(num_classes=10), 64), {}, _Task(swin, 64), {}, log=lambda m: None)
    by_stride = {p["name"].rsplit("_s", 1)[1]: p for p in pairs if p["name"] != "kl_logits"}
    # Swin: each stage's last block, before its patch merging (the stage layers return (x, H, W) tuples)
    assert [by_stride[s]["teacher"] for s in ("4", "8", "16")] == [f"layers.{i}.blocks.0" for i in range(3)]
    assert by_stride["4"]["align"] == {"teacher": "tokens_to_map", "type": "1x1conv"}
    assert by_stride["4"]["student"] == "layer1"  # resnet18's stride-4 stage (64 channels vs Swin's 16)


def test_vit_teacher_to_cnn_student_trains_a_token_to_map_pair_from_the_command_line(tmp_path):
    from slim.datasets import mnist
    from tests.helpers.cli import run_tool
    from tests.helpers.cls_fixtures import STUDENT_MODEL, base_config, write_yaml
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=4)
    base = base_config(data, iters=3, batch_size=8)
    vit = {"type": "ViT", "input_size": 28, "patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2,
           "in_channels": 1, "num_classes": 10}
    teacher_cfg = write_yaml(str(tmp_path / "vit.yml"), dict(base, model=vit))
    pair = {"name": "tokens", "student": "backbone.features", "teacher": "backbone.blocks.0", "loss": "L2Loss",
            "align": {"teacher": "tokens_to_map", "type": "1x1conv", "resize": "teacher"}}
    student_cfg = write_yaml(str(tmp_path / "cnn.yml"), dict(base, model=STUDENT_MODEL, distill=[pair]))
    assert run_tool("train", "--config", teacher_cfg, "--iters", 2, "--seed", 0, "--save_dir", tmp_path / "vit") == 0
    out = tmp_path / "cnn"
    assert run_tool("distill_train", "-t", teacher_cfg, "-c", student_cfg, "--teacher_pretrained",
                    tmp_path / "vit" / "iter_2" / "model.pdparams", "--iters", 2, "--log_iters", 1, "--seed", 0,
                    "--save_dir", out) == 0
    log = open(out / "record.txt").read()
    assert "distill pair 'tokens'" in log and "tokens:" in log
    state = paddle.load(str(out / "iter_2" / "connectors.pdparams"))
    assert list(state["layers.pair0_0.proj.weight"].shape) == [16, 4, 1, 1]  # 4 student channels -> width 16
