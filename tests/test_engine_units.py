"""Trainer building blocks: schedules, warm-up, batch scaling, resumable sampling, optimizer state."""
import numpy as np
import paddle
import pytest

from slim.distill.errors import ConfigError
from slim.engine.checkpoint import portable_optimizer_state, restore_optimizer_state
from slim.engine.data import ResumableBatchSampler
from slim.engine.optim import build_lr_scheduler, build_optimizer


def lrs(schedule, n):
    out = []
    for _ in range(n):
        out.append(schedule.get_lr() if hasattr(schedule, "get_lr") else schedule())
        schedule.step()
    return np.array(out)


def test_polynomial_with_warmup_iters():
    cfg = {"lr_scheduler": {"type": "PolynomialDecay", "learning_rate": 0.1, "end_lr": 0.0, "power": 1.0,
                            "warmup_iters": 4, "warmup_start_lr": 0.0}}
    got = lrs(build_lr_scheduler(cfg, total_iters=14, iters_per_epoch=5), 14)
    np.testing.assert_allclose(got[:4], [0.0, 0.025, 0.05, 0.075])  # linear warm-up
    np.testing.assert_allclose(got[4:], 0.1 * (1 - np.arange(10) / 10))  # decays over the other 10


def test_warmup_in_epochs_and_linear_scaling():
    cfg = {"lr_scheduler": {"type": "CosineAnnealingDecay", "learning_rate": 0.2, "warmup_epochs": 2}}
    sched = build_lr_scheduler(cfg, total_iters=30, iters_per_epoch=5, lr_scale=0.5, warmup_scale=2.0)
    got = lrs(sched, 30)
    assert got[19] < 0.1 and abs(got[20] - 0.1) < 1e-9  # 2 epochs x 5 iterations x 2 = 20 warm-up steps
    with pytest.raises(ConfigError, match="not both"):
        build_lr_scheduler({"lr_scheduler": {"type": "PolynomialDecay", "learning_rate": 1, "warmup_iters": 1,
                                             "warmup_epochs": 1}}, 10, 5)


def test_constant_rate_and_bad_schedule():
    np.testing.assert_allclose(lrs(build_lr_scheduler({"learning_rate": 0.3}, 5, 5), 3), [0.3] * 3)
    with pytest.raises(ConfigError, match="PolynomialDecay"):
        build_lr_scheduler({"lr_scheduler": {"type": "Polynomial", "learning_rate": 0.1}}, 10, 5)


def test_optimizer_trains_only_unfrozen_parameters_with_group_multipliers():
    net = paddle.nn.Sequential(paddle.nn.Linear(2, 2), paddle.nn.Linear(2, 2))
    net[0].weight.stop_gradient = True
    cfg = {"optimizer": {"type": "SGD", "momentum": 0.9, "weight_decay": 1e-4,
                         "custom_cfg": [{"name": "1.", "lr_mult": 0.1}]}}
    opt = build_optimizer(cfg, list(net.named_parameters()), 0.5)
    assert type(opt).__name__ == "Momentum"
    params = [p for group in opt._param_groups for p in group["params"]]
    assert net[0].weight.name not in {p.name for p in params} and len(params) == 3
    with pytest.raises(ConfigError, match="Momentum"):
        build_optimizer({"optimizer": {"type": "Nesterov"}}, list(net.named_parameters()), 0.1)


def test_sampler_resumed_mid_epoch_yields_the_rest_of_that_epoch():
    full = ResumableBatchSampler(10, 3, seed=5)
    full.set_epoch(2)
    batches = list(full)
    resumed = ResumableBatchSampler(10, 3, seed=5)
    resumed.set_epoch(2, start_batch=1)
    assert list(resumed) == batches[1:]
    other = ResumableBatchSampler(10, 3, seed=5)
    other.set_epoch(3)
    assert list(other) != batches  # reshuffled every epoch


def test_two_ranks_split_each_batch_without_overlap():
    ranks = [ResumableBatchSampler(12, 2, rank=r, world_size=2, seed=1) for r in range(2)]
    a, b = (list(s) for s in ranks)
    seen = [i for batch in a + b for _, i in batch]
    assert len(a) == len(b) == 3 and len(seen) == len(set(seen)) == 12


def test_optimizer_state_survives_other_parameter_names():
    def make():
        net = paddle.nn.Linear(3, 2)
        opt = paddle.optimizer.Momentum(learning_rate=0.1, momentum=0.9, parameters=net.parameters())
        return net, opt

    net, opt = make()
    net(paddle.ones([1, 3])).sum().backward()
    opt.step()
    saved = portable_optimizer_state(opt.state_dict(), list(net.named_parameters()))
    assert any(k.startswith("@weight_velocity") for k in saved)
    paddle.nn.Linear(1, 1)  # shifts Paddle's generated parameter names
    net2, opt2 = make()
    assert net2.weight.name != net.weight.name
    opt2.set_state_dict(restore_optimizer_state(saved, list(net2.named_parameters())))
    velocity = [v for k, v in opt2.state_dict().items() if k.startswith(net2.weight.name)]
    np.testing.assert_allclose(velocity[0].numpy(), np.ones((3, 2)))


def test_count_macs_counts_convolutions_and_linears_and_restores_train_mode():
    import paddle.nn as nn
    from slim.engine.analysis import count_macs
    model = nn.Sequential(nn.Conv2D(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    model.train()
    # conv: 8 x 4 x 4 outputs, each 3 x 3 x 3 multiply-adds; linear: 10 outputs of 128 inputs
    assert count_macs(model, paddle.randn([1, 3, 4, 4])) == 8 * 16 * 27 + 128 * 10
    assert model.training
