"""PaddleClas's batch_transform_ops (slim/tasks/ppcls/batch_ops.py): Mixup, Cutmix and OpSampler against NumPy with
the same draws, FMix's mask against values PaddleClas d178931's fmix.sample_mask gave for the same seeds, soft targets
read as PaddleClas's CELoss reads them, per-batch seeding in the data loader, and PaddleClas's DeiT-distilled config
(Mixup/Cutmix, distillation token from a frozen teacher) training through tools/train.py."""
import random

import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.tasks.ppcls.batch_ops import (CutmixOperator, FmixOperator, MixingCollate, MixupOperator, OpSampler,
                                        binary_mask, build_batch_ops, low_frequency_image)
from slim.tasks.ppcls.losses import cross_entropy


def batch(n=6, seed=0, h=7, w=9):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 2, h, w).astype("float32"), rng.randint(0, 4, n)


def seed_all(seed):
    np.random.seed(seed)
    random.seed(seed)


def onehot(labels, classes=4):
    return np.eye(classes, dtype="float32")[labels]


def test_mixup_blends_the_batch_with_a_permutation_of_itself():
    x, y = batch()
    seed_all(3)
    got_x, got_t = MixupOperator(4, alpha=0.8)(x, y)
    seed_all(3)
    perm, lam = np.random.permutation(6), np.random.beta(0.8, 0.8)
    np.testing.assert_allclose(got_x, lam * x + (1 - lam) * x[perm], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_t, lam * onehot(y) + (1 - lam) * onehot(y[perm]), rtol=1e-6)
    assert got_x.dtype == np.float32 and got_t.dtype == np.float32


@pytest.mark.parametrize("seed", [1, 4])
def test_cutmix_pastes_a_box_and_weighs_the_targets_by_its_area(seed):
    x, y = batch(seed=seed)
    seed_all(seed)
    got_x, got_t = CutmixOperator(4, alpha=1.0)(x, y)
    seed_all(seed)
    perm, lam = np.random.permutation(6), np.random.beta(1.0, 1.0)
    cut = np.sqrt(1 - lam)
    ch, cw = int(7 * cut), int(9 * cut)
    cy, cx = np.random.randint(7), np.random.randint(9)  # PaddleClas draws the centre on axis 2 first
    y1, y2 = np.clip([cy - ch // 2, cy + ch // 2], 0, 7)
    x1, x2 = np.clip([cx - cw // 2, cx + cw // 2], 0, 9)
    want = x.copy()
    want[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    area = 1 - (y2 - y1) * (x2 - x1) / 63.0
    np.testing.assert_array_equal(got_x, want)
    np.testing.assert_allclose(got_t, area * onehot(y) + (1 - area) * onehot(y[perm]), rtol=1e-6)


# lam and mask of PaddleClas d178931's ppcls/data/preprocess/ops/fmix.py sample_mask(1.0, 3, (h, w), max_soft)
# after np.random.seed(seed); random.seed(seed)
FMIX_GOLDEN = [
    ((5, 6, 0.0, 3), 0.3628452076929192,
     [0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1]),
    ((4, 7, 0.2, 5), 0.6125638605120026,
     [0.0, 0.0, 0.0, 0.333333, 0.444444, 0.111111, 0.0, 0.555556, 0.888889, 1.0, 1.0, 1.0, 1.0, 0.777778, 1.0, 1.0,
      1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.222222, 1.0, 1.0, 1.0, 0.666667]),
]


@pytest.mark.parametrize("case, lam, mask", FMIX_GOLDEN)
def test_fmix_mask_equals_paddleclas_for_the_same_draws(case, lam, mask):
    h, w, soft, seed = case
    seed_all(seed)
    got_lam = np.random.beta(1.0, 1.0)
    got = binary_mask(low_frequency_image(h, w, 3.0), got_lam, soft)
    assert got_lam == pytest.approx(lam, rel=1e-12)
    np.testing.assert_allclose(got.reshape(-1), mask, atol=1e-6)
    # the operator draws the permutation first, then the same: its images blend through that mask
    x, y = batch(n=3, seed=seed, h=h, w=w)
    seed_all(seed)
    got_x, got_t = FmixOperator(4, alpha=1.0, max_soft=soft)(x, y)
    seed_all(seed)
    perm, lam = np.random.permutation(3), np.random.beta(1.0, 1.0)
    m = binary_mask(low_frequency_image(h, w, 3.0), lam, soft)
    np.testing.assert_allclose(got_x, m * x + (1 - m) * x[perm], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_t, lam * onehot(y) + (1 - lam) * onehot(y[perm]), rtol=1e-6)


def test_op_sampler_picks_one_operator_with_python_random_or_none():
    x, y = batch()
    chosen = []
    for seed in range(40):
        random.seed(seed)
        pick = random.choices(["mixup", "cutmix", None], weights=[0.5, 0.3, 0.2], k=1)[0]
        seed_all(seed)
        got_x, got_t = OpSampler(4, MixupOperator={"alpha": 0.8, "prob": 0.5},
                                 CutmixOperator={"alpha": 1.0, "prob": 0.3})(x, y)
        np.random.seed(seed)
        if pick is None:
            assert got_t is y and got_x is x  # not mixed: the integer labels stay
        elif pick == "mixup":
            want_x, want_t = MixupOperator(4, 0.8)(x, y)
            np.testing.assert_array_equal(got_x, want_x)
        else:
            want_x, want_t = CutmixOperator(4, 1.0)(x, y)
            np.testing.assert_array_equal(got_x, want_x)
        chosen.append(pick)
    assert {"mixup", "cutmix", None} == set(chosen)


def test_operator_errors_name_the_fix():
    with pytest.raises(ConfigError, match="add up to 1.2"):
        OpSampler(4, MixupOperator={"alpha": 1, "prob": 0.7}, CutmixOperator={"alpha": 1, "prob": 0.5})
    with pytest.raises(ConfigError, match="MixupCutmixHybrid' is not supported; supported: OpSampler"):
        build_batch_ops([{"MixupCutmixHybrid": {}}], 4, "batch_transform_ops")
    with pytest.raises(ConfigError, match="Arch.class_num"):
        MixupOperator(None)
    x, y = batch()
    _, soft = MixupOperator(4)(x, y)
    with pytest.raises(ConfigError, match="already mixed"):
        CutmixOperator(4)(x, soft)


def test_soft_targets_are_read_as_paddleclas_celoss_reads_them():
    rng = np.random.RandomState(0)
    z = rng.randn(5, 4).astype("float32")
    target = np.abs(rng.randn(5, 4)).astype("float32")
    target /= target.sum(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    smoothed = target * 0.9 + 0.1 / 4
    got = float(cross_entropy(paddle.to_tensor(z), paddle.to_tensor(target), epsilon=0.1))
    assert got == pytest.approx(-(smoothed * log_p).sum(axis=1).mean(), rel=1e-5)
    # without epsilon PaddleClas's CELoss takes the softmax of the soft label
    soft = np.exp(target) / np.exp(target).sum(axis=1, keepdims=True)
    got = float(cross_entropy(paddle.to_tensor(z), paddle.to_tensor(target)))
    assert got == pytest.approx(-(soft * log_p).sum(axis=1).mean(), rel=1e-5)


def test_each_batch_is_mixed_from_the_data_seed_and_its_samples():
    from slim.engine.data import BatchStream, batch_seed

    class Samples(paddle.io.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"img": np.full((1, 4, 4), float(i), dtype="float32"), "label": i % 4}

    ops = build_batch_ops([{"MixupOperator": {"alpha": 1.0}}], 4, "batch_transform_ops")

    def batches(seed, start=0):
        stream = BatchStream(Samples(), 4, MixingCollate(ops), seed=seed)
        stream.start_at(start)
        out = [next(stream) for _ in range(4 - start)]
        stream.close()
        return [(b["img"].numpy(), b["label"].numpy()) for b in out]

    first, again, resumed = batches(1), batches(1), batches(1, start=2)
    for (xa, ya), (xb, yb) in zip(first, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for (xa, _), (xb, _) in zip(first[2:], resumed):  # a resumed run mixes its batches the same way
        np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(first[0][0], batches(2)[0][0])
    assert first[0][1].shape == (4, 4) and first[0][1].dtype == np.float32
    assert batch_seed(0, [(0, 1), (0, 2)]) != batch_seed(0, [(1, 1), (1, 2)]) != batch_seed(1, [(1, 1), (1, 2)])


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("token", ["hard", "soft"])
def test_distillation_token_loss_trains_the_class_head_on_labels_and_head_dist_on_the_teacher(token):
    from slim.tasks.ppcls.losses import build_loss_entry
    import slim.tasks.ppcls.deit  # noqa: F401  (registers it)
    rng = np.random.RandomState(1)
    cls_z, dist_z, t_z = (rng.randn(4, 5).astype("float32") for _ in range(3))
    target = onehot(np.array([0, 1, 2, 3]), 5) * 0.7 + onehot(np.array([1, 2, 3, 4]), 5) * 0.3  # a mixed batch
    loss = build_loss_entry({"DistillationTokenLoss": {"weight": 2.0, "model_name_pairs": [["Student", "Teacher"]],
                                                       "distill_token": token, "tau": 2.0, "alpha": 0.25,
                                                       "epsilon": 0.1}})
    assert loss.keys_needed() == {"Student": ["head", "head_dist"]}
    predicts = {"Student": {"logits": paddle.to_tensor((cls_z + dist_z) / 2), "head": paddle.to_tensor(cls_z),
                            "head_dist": paddle.to_tensor(dist_z)}, "Teacher": paddle.to_tensor(t_z)}
    terms = loss(predicts, paddle.to_tensor(target))
    ce = -((target * 0.9 + 0.1 / 5) * np_log_softmax(cls_z)).sum(axis=1).mean()
    if token == "hard":
        tok = -np_log_softmax(dist_z)[np.arange(4), t_z.argmax(axis=1)].mean()
    else:
        pt = np.exp(np_log_softmax(t_z / 2))
        tok = 4 * (pt * (np.log(pt) - np_log_softmax(dist_z / 2))).sum(axis=1).mean()
    assert float(terms["CELoss_Student_head"]) == pytest.approx(2.0 * 0.75 * ce, rel=1e-5)
    assert float(terms["loss_token_Student_Teacher"]) == pytest.approx(2.0 * 0.25 * tok, rel=1e-5)


def test_paddleclas_deit_distilled_config_trains_its_token_from_a_frozen_teacher_with_mixup(tmp_path):
    import os
    from slim.datasets import mnist
    from slim.tasks.ppcls.arch import backbone_factory
    from tests.helpers.cli import ROOT, run_tool
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=2)
    teacher = str(tmp_path / "teacher.pdparams")
    paddle.save(backbone_factory("ResNet18")(class_num=10).state_dict(), teacher)  # weights of a frozen teacher
    cfg = os.path.join(ROOT, "configs", "ppcls", "DeiT_tiny_distilled_patch16_224_distill_mnist.yaml")
    opts = ["-o", f"DataLoader.Train.dataset.image_root={data}", f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            "DataLoader.Train.sampler.batch_size=8", "Global.print_batch_step=1", f"Arch.models.0.Teacher.pretrained={teacher}"]
    out = tmp_path / "deit"
    assert run_tool("train", "-c", cfg, *opts, "--iters", 3, "--seed", 0, "--save_dir", out) == 0
    log = (out / "record.txt").read_text()
    assert "CELoss_Student_head:" in log and "loss_token_Student_Teacher:" in log
    assert (out / "iter_3" / "model.pdparams").is_file()


def test_mixed_batches_from_the_teacher_cache_equal_the_uncached_run(tmp_path):
    """Mixup/Cutmix with drop_last False (the last batch of an epoch refills samples seen earlier in it, mixed
    with other partners): float32 cache entries keyed by the place in the epoch replay the uncached run's losses
    exactly, in the run that fills the cache and in the run that reads it."""
    import os
    from slim.datasets import mnist
    from tests.helpers.cli import ROOT, logged_losses, run_tool
    data = str(tmp_path / "data")
    mnist.prepare(data, per_class=3)  # 30 train images: batches of 8, the 4th refilled with 2 samples
    teacher = str(tmp_path / "teacher.pdparams")
    from slim.tasks.ppcls.arch import backbone_factory
    paddle.save(backbone_factory("ResNet18")(class_num=10).state_dict(), teacher)
    cfg = os.path.join(ROOT, "configs", "ppcls", "R50_vd_distill_MV3_large_x1_0_mnist.yaml")
    opts = ["-o", f"DataLoader.Train.dataset.image_root={data}", f"DataLoader.Train.dataset.cls_label_path={data}/train_list.txt",
            f"DataLoader.Eval.dataset.image_root={data}", f"DataLoader.Eval.dataset.cls_label_path={data}/val_list.txt",
            "DataLoader.Train.sampler.batch_size=8", "DataLoader.Train.sampler.drop_last=False",
            "Arch.models.0.Teacher.name=ResNet18", f"Arch.models.0.Teacher.pretrained={teacher}",
            "Arch.models.1.Student.name=MobileNetV3_small_x0_35", "Global.print_batch_step=1",
            "DataLoader.Train.dataset.batch_transform_ops=[{OpSampler: {MixupOperator: {alpha: 0.8, prob: 0.5}, "
            "CutmixOperator: {alpha: 1.0, prob: 0.5}}}]"]
    common = ["--iters", 4, "--seed", 0, "--log_iters", 1]  # the 4th batch refills 2 samples of the 1st
    cache = ["--teacher_cache", tmp_path / "cache", "--teacher_cache_dtype", "float32"]
    assert run_tool("train", "-c", cfg, *opts, *common, "--save_dir", tmp_path / "uncached") == 0
    assert run_tool("train", "-c", cfg, *opts, *common, *cache, "--save_dir", tmp_path / "fill") == 0
    assert run_tool("train", "-c", cfg, *opts, *common, *cache, "--save_dir", tmp_path / "read") == 0
    assert "32 sample(s) read, 0 computed" in (tmp_path / "read" / "record.txt").read_text()
    reference = logged_losses(tmp_path / "uncached")
    assert len(reference) == 4
    assert logged_losses(tmp_path / "fill") == reference
    assert logged_losses(tmp_path / "read") == reference
