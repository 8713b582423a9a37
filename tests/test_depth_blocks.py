"""Block lists, progressive removal, cutting and freezing on small real models (no training loop)."""
import math

import numpy as np
import paddle
import pytest

from slim.depth import (FrozenLayersEvalHook, ProgressiveRemoval, apply_freeze, blend_factor, block_lists,
                        check_removal, compare_outputs, cut_state_dict, find_block_list, kept_indices,
                        layer_pairs, parse_removal, renumber_index)
from slim.distill.errors import ConfigError
from slim.tasks.seg import build_component
from tests.helpers.depth_fixtures import TinyViT, segformer, vision_resnet18


def test_blend_factor_is_the_exact_cosine_schedule_from_1_to_0():
    n = 8
    assert blend_factor(0, n) == 1.0
    for k in range(1, n):
        assert blend_factor(k, n) == pytest.approx(0.5 * (1 + math.cos(math.pi * k / n)), abs=1e-15)
    assert blend_factor(n // 2, n) == pytest.approx(0.5, abs=1e-15)
    assert [blend_factor(k, n) for k in (n, n + 1, 10 * n)] == [0.0, 0.0, 0.0]
    values = [blend_factor(k, n) for k in range(n + 1)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly decreasing to 0
    assert blend_factor(0, 0) == 0.0  # remove_iters 0: identities from the start


def _capture(layer):
    seen = {}

    def hook(_, inputs, output):
        seen["in"], seen["out"] = inputs[0], output

    return seen, layer.register_forward_post_hook(hook)


def test_removed_block_blends_and_is_exactly_its_input_at_zero():
    model = TinyViT(depth=4)
    model.eval()
    x = paddle.randn([2, 3, 16, 16])
    block = model.blocks[2]
    seen, handle = _capture(block)
    model(x)
    original_in, original_out = seen["in"].numpy(), seen["out"].numpy()

    removal = ProgressiveRemoval(model, parse_removal([2], "blocks"), remove_iters=4)
    removal.set_iter(0)
    model(x)
    np.testing.assert_array_equal(seen["out"].numpy(), original_out)  # a = 1: untouched
    removal.set_iter(1)
    a = blend_factor(1, 4)
    model(x)
    np.testing.assert_allclose(seen["out"].numpy(), a * original_out + (1 - a) * original_in, rtol=1e-5, atol=1e-6)
    removal.set_iter(4)
    model(x)
    np.testing.assert_array_equal(seen["out"].numpy(), seen["in"].numpy())  # a = 0: exactly the input
    handle.remove()
    removal.remove()
    np.testing.assert_array_equal(block(paddle.to_tensor(original_in)).numpy(), original_out)


def test_removal_keeps_state_dict_keys_and_gradients_reach_kept_blocks_only_at_zero():
    model = TinyViT(depth=3)
    keys = list(model.state_dict())
    removal = ProgressiveRemoval(model, parse_removal([1], "blocks"), remove_iters=2)
    assert list(model.state_dict()) == keys
    removal.set_iter(2)
    model(paddle.randn([2, 3, 16, 16])).sum().backward()
    assert all(p.grad is None for p in model.blocks[1].parameters())
    assert all(p.grad is not None for p in model.blocks[0].parameters())


def mix_vision_transformer(depths):
    """paddleseg's SegFormer backbone (MixVisionTransformer), tiny: blocks in block1..block4 (LayerLists)."""
    from paddleseg.models.backbones.mix_transformer import MixVisionTransformer
    return MixVisionTransformer(embed_dims=[8, 16, 16, 16], num_heads=[1, 1, 2, 2], mlp_ratios=[2, 2, 2, 2],
                                qkv_bias=True, depths=depths, sr_ratios=[4, 2, 1, 1])


@pytest.mark.parametrize("build, removed, name, small_build", [
    (lambda: TinyViT(depth=6), [1, 2, 4], "blocks", lambda: TinyViT(depth=3)),
    (lambda: build_component(segformer([1, 1, 4, 1])), [0, 3], "backbone.block3",
     lambda: build_component(segformer([1, 1, 2, 1]))),
    (lambda: mix_vision_transformer([2, 2, 3, 2]), [1], "block3", lambda: mix_vision_transformer([2, 2, 2, 2])),
], ids=["small_vit", "paddleseg_mscan", "paddleseg_mix_vision_transformer"])
def test_cut_checkpoint_loads_strictly_into_the_shallower_model_with_equal_outputs(build, removed, name, small_build):
    paddle.seed(1)
    model = build()
    # move BN statistics away from their defaults, so that a wrong renumbering would show
    for key, value in model.state_dict().items():
        if key.endswith("_mean") or key.endswith("_variance"):
            value.set_value(paddle.rand(value.shape) + 0.5)
    removal = ProgressiveRemoval(model, parse_removal(removed, name), remove_iters=10)
    removal.set_iter(10)
    state = cut_state_dict(model.state_dict(), removal.removal)
    small = small_build()
    assert sorted(state) == sorted(small.state_dict())  # strict: nothing missing, nothing extra
    for key, value in small.state_dict().items():
        assert list(state[key].shape) == list(value.shape), key
    small.set_state_dict(state)
    x = paddle.randn([2, 3, 16, 16] if isinstance(model, TinyViT) else [1, 3, 64, 64])
    assert compare_outputs(model, small_build(), (x,)) > 1e-3  # a model with other weights differs
    assert compare_outputs(model, small, (x,)) <= 1e-5
    kept = kept_indices(removed, len(find_block_list(model, name)))
    first_kept = f"{name}.{kept[-1]}."
    last_new = f"{name}.{len(kept) - 1}."
    for key in model.state_dict():
        if key.startswith(first_kept):
            np.testing.assert_array_equal(state[last_new + key[len(first_kept):]].numpy(),
                                          model.state_dict()[key].numpy())


def test_cut_of_several_block_lists_and_sequential_keys():
    state = {"stem.w": 0, "layers.0.w": 1, "layers.1.w": 2, "layers.2.w": 3, "layers.2.sub.0.w": 4,
             "other.0.w": 5, "other.1.w": 6, "layers10.0.w": 7}
    out = cut_state_dict(state, parse_removal({"layers": [1], "other": [0]}))
    assert out == {"stem.w": 0, "layers.0.w": 1, "layers.1.w": 3, "layers.1.sub.0.w": 4, "other.0.w": 6,
                   "layers10.0.w": 7}
    with pytest.raises(ConfigError, match="keep at least one"):
        cut_state_dict(state, parse_removal({"other": [0, 1]}))
    with pytest.raises(ConfigError, match="valid 0..2"):
        cut_state_dict(state, parse_removal({"layers": [3]}))


def test_layer_indices_are_renumbered_through_the_cut():
    removed, n = [1, 3, 4], 6  # kept 0, 2, 5 -> 0, 1, 2
    assert [renumber_index(i, removed, n) for i in (0, 2, 5)] == [0, 1, 2]
    # a removed block is an identity: its output is that of the last kept block before it
    assert [renumber_index(i, removed, n) for i in (1, 3, 4)] == [0, 1, 1]
    with pytest.raises(ConfigError, match="no kept block comes before it"):
        renumber_index(0, [0, 1], 4)
    with pytest.raises(ConfigError, match="valid 0..5"):
        renumber_index(6, removed, n)


def test_bad_block_list_name_and_indices_are_clear_errors():
    model = build_component(segformer([1, 1, 4, 1]))
    assert list(block_lists(model)) == ["backbone.block1", "backbone.block2", "backbone.block3", "backbone.block4"]
    with pytest.raises(ConfigError) as err:
        check_removal(model, parse_removal([1], "backbone.blocks3"))
    assert "'backbone.blocks3' does not exist" in str(err.value) and "backbone.block3 (4 blocks)" in str(err.value)
    with pytest.raises(ConfigError, match="is not a LayerList or Sequential"):
        find_block_list(model, "backbone.norm1")
    with pytest.raises(ConfigError, match=r"index 4 is out of range .* valid indices are 0\.\.3"):
        check_removal(model, parse_removal([1, 4], "backbone.block3"))
    with pytest.raises(ConfigError, match="removing all 4 blocks"):
        check_removal(model, parse_removal([0, 1, 2, 3], "backbone.block3"))
    with pytest.raises(ConfigError, match="block_list"):
        parse_removal([1, 2])
    with pytest.raises(ConfigError, match="integers"):
        parse_removal(["1"], "backbone.block3")


def test_a_shape_changing_block_of_a_paddle_vision_resnet_is_refused_and_others_work():
    model = vision_resnet18()
    x = paddle.randn([1, 3, 32, 32])
    with pytest.raises(ConfigError, match=r"layer2\.0 .* maps \[1, 64, 8, 8\] to \[1, 128, 4, 4\]"):
        ProgressiveRemoval(model, parse_removal([0], "layer2"), 4).check_shapes(x)
    model = vision_resnet18()
    seen, _ = _capture(model.layer3[1])
    removal = ProgressiveRemoval(model, parse_removal({"layer3": [1], "layer4": [1]}), 4)
    removal.check_shapes(x)
    removal.set_iter(4)
    model.eval()
    model(x)
    np.testing.assert_array_equal(seen["out"].numpy(), seen["in"].numpy())


def test_layer_pairs_default_to_l2_between_block_outputs():
    pairs = layer_pairs("backbone.block3", [0, 2], "backbone.block3", [1, 3])
    assert [(p["student"], p["teacher"], p["loss"]["type"]) for p in pairs] == [
        ("backbone.block3.0", "backbone.block3.1", "L2Loss"), ("backbone.block3.2", "backbone.block3.3", "L2Loss")]
    with pytest.raises(ConfigError, match="one teacher index per student index"):
        layer_pairs("b", [0, 1], "b", [0])


def test_freeze_patterns_count_parameters_and_keep_frozen_norms_in_eval():
    model = build_component(segformer([1, 1, 2, 1]))
    lines = []
    n_train, n_total = apply_freeze(model, trainable=["linear_pred"], log=lines.append)
    expected = sum(int(p.size) for n, p in model.named_parameters() if n.startswith("linear_pred."))
    assert n_train == expected and n_total == sum(int(p.size) for p in model.parameters())
    assert f"{expected:,} of {n_total:,} parameters train" in lines[0]
    assert [n for n, p in model.named_parameters() if not p.stop_gradient] == ["linear_pred.weight", "linear_pred.bias"]
    apply_freeze(model, freeze=["backbone.*"], trainable=["backbone.block3.1"], log=lines.append)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if not p.stop_gradient}
    assert "backbone" in trainable and "linear_pred" in trainable
    assert all(p.stop_gradient for n, p in model.named_parameters() if n.startswith("backbone.block3.0."))
    with pytest.raises(ConfigError, match="matches no parameter .* start with: backbone"):
        apply_freeze(model, trainable=["decode_head"])

    model = build_component(segformer([1, 1, 2, 1]))
    apply_freeze(model, trainable=["linear_pred"], log=lambda *_: None)
    hook = FrozenLayersEvalHook(model)
    assert "backbone" in [n for n, _ in hook.layers] and "linear_pred" not in [n for n, _ in hook.layers]
    model.train()
    hook.before_step(None)
    assert not model.backbone.training and not model.linear_fuse.training and model.linear_pred.training
    hook.before_step(None)  # already in eval: stays so
    assert not model.backbone.training and model.linear_pred.training
    model.train()  # as the trainer does after each evaluation
    hook.before_step(None)
    assert not model.backbone.training and not model.linear_fuse.training and model.linear_pred.training
