"""PaddleClas's learning-rate schedules, at every iteration, against the rates PaddleClas computes.

RATES holds, for each config, the rate at every iteration of a run as PaddleClas d178931 gives it: its own
ppcls/optimizer (build_lr_scheduler from learning_rate.py) built for Global.epochs and step_each_epoch, stepped as
its ppcls/engine/train/train.py steps it (after every iteration, or after every epoch with by_epoch), on Paddle
3.3.1. Each is compared with the rate this package's trainer gets from the same Optimizer section
(slim/tasks/ppcls/optimizer.py -> slim/engine/optim.py), iteration by iteration.
"""
from fractions import Fraction

import numpy as np
import paddle
import pytest

from slim.engine.optim import build_lr_scheduler
from slim.tasks.ppcls.optimizer import optimizer_settings
from slim.tasks.ppcls.schedule import PaddleClasSchedule

# (case, Global.epochs, step_each_epoch, Optimizer.lr, PaddleClas's rate at iterations 0, 1, ...)
RATES = [
    ("cosine", 4, 5,
     {"name": "Cosine", "learning_rate": 0.1},
     [0.1, 0.0993844170297569, 0.09755282581475769, 0.0945503262094184, 0.0904508497187474, 0.08535533905932739,
     0.07938926261462367, 0.07269952498697735, 0.06545084971874739, 0.05782172325201156, 0.05000000000000001,
     0.04217827674798848, 0.03454915028125264, 0.027300475013022667, 0.020610737385376353, 0.014644660940672629,
     0.009549150281252633, 0.005449673790581611, 0.0024471741852423235, 0.0006155829702431171]),
    ("cosine_warmup", 4, 5,
     {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1, "warmup_start_lr": 0.01, "eta_min": 0.001},
     [0.01, 0.028000000000000004, 0.046000000000000006, 0.064, 0.082, 0.1, 0.09891830623632339,
     0.09572050015330874, 0.0905463412215599, 0.08362196501476349, 0.07525000000000001, 0.0657963412215599,
     0.05567415893174885, 0.04532584106825117, 0.03520365877844011, 0.025750000000000012, 0.017378034985236535,
     0.010453658778440109, 0.005279499846691252, 0.0020816937636766184]),
    ("cosine_warmup_clipped", 3, 6,
     {"name": "Cosine", "learning_rate": 0.04, "warmup_epoch": 5},
     [0.0, 0.0022222222222222222, 0.0044444444444444444, 0.006666666666666666, 0.008888888888888889,
     0.011111111111111112, 0.013333333333333332, 0.015555555555555557, 0.017777777777777778, 0.02,
     0.022222222222222223, 0.024444444444444446, 0.026666666666666665, 0.02888888888888889,
     0.031111111111111114, 0.03333333333333333, 0.035555555555555556, 0.03777777777777778]),
    ("cosine_by_epoch", 4, 5,
     {"name": "Cosine", "learning_rate": 0.1, "by_epoch": True},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.08535533905932738, 0.08535533905932738, 0.08535533905932738,
     0.08535533905932738, 0.08535533905932738, 0.05, 0.05, 0.05, 0.05, 0.05, 0.014644660940672627,
     0.014644660940672627, 0.014644660940672627, 0.014644660940672627, 0.014644660940672627]),
    ("cosine_by_epoch_warmup", 5, 3,
     {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1, "by_epoch": True},
     [0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.08535533905932738, 0.08535533905932738, 0.08535533905932738, 0.05, 0.05,
     0.05, 0.014644660940672627, 0.014644660940672627, 0.014644660940672627]),
    ("cosine_last_epoch", 4, 5,
     {"name": "Cosine", "learning_rate": 0.1, "last_epoch": 3},
     [0.09566423865995859, 0.09027503392243709, 0.08396508589381842, 0.07688976643608403, 0.06922329339592237,
     0.06115444078314749, 0.05288189052807242, 0.04460934027299737, 0.036540487660222484, 0.02887401462006082,
     0.021798695162326433, 0.015488747133707757, 0.010099542396186273, 0.005763781056144843,
     0.002588223947342187, 0.0006510638248668436, 0.0, 0.0006155829702431115, 0.0024471741852423123,
     0.005449673790581605]),
    ("cosine_warmup_last_epoch", 4, 5,
     {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1, "last_epoch": 2},
     [0.06000000000000001, 0.08, 0.1, 0.09890738003669029, 0.09567727288213004, 0.09045084971874738,
     0.08345653031794292, 0.07500000000000001, 0.06545084971874737, 0.05522642316338268, 0.04477357683661734,
     0.03454915028125263, 0.025000000000000012, 0.016543469682057107, 0.009549150281252633,
     0.004322727117869951, 0.0010926199633097156, 0.0, 0.0010926199633097156, 0.004322727117869957]),
    ("linear", 4, 5,
     {"name": "Linear", "learning_rate": 0.1, "end_lr": 0.001, "power": 2.0},
     [0.1, 0.0903475, 0.08119000000000001, 0.0725275, 0.06436000000000001, 0.0566875, 0.04951,
     0.042827500000000004, 0.03664, 0.030947500000000006, 0.025750000000000002, 0.021047499999999997,
     0.016840000000000004, 0.0131275, 0.009910000000000002, 0.0071875, 0.004959999999999998,
     0.0032275000000000008, 0.0019899999999999996, 0.0012475000000000003]),
    ("linear_warmup", 4, 5,
     {"name": "Linear", "learning_rate": 0.1, "warmup_epoch": 1, "warmup_start_lr": 0.02},
     [0.02, 0.036000000000000004, 0.052000000000000005, 0.068, 0.084, 0.1, 0.09333333333333334,
     0.08666666666666667, 0.08000000000000002, 0.07333333333333335, 0.06666666666666668, 0.06,
     0.05333333333333334, 0.04666666666666667, 0.04000000000000001, 0.03333333333333334, 0.026666666666666672,
     0.019999999999999997, 0.01333333333333333, 0.006666666666666665]),
    ("linear_warmup_clipped", 4, 5,
     {"name": "Linear", "learning_rate": 0.1, "warmup_epoch": 4},
     [0.0, 0.005, 0.01, 0.015000000000000003, 0.02, 0.025, 0.030000000000000006, 0.035, 0.04, 0.045, 0.05,
     0.05500000000000001, 0.06000000000000001, 0.065, 0.07, 0.075, 0.08, 0.085, 0.09, 0.095]),
    ("linear_by_epoch_warmup", 4, 2,
     {"name": "Linear", "learning_rate": 0.1, "warmup_epoch": 1, "by_epoch": True},
     [0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.06666666666666668, 0.06666666666666668]),
    ("linear_cycle", 4, 5,
     {"name": "Linear", "learning_rate": 0.1, "end_lr": 0.01, "power": 1.0, "cycle": True},
     [0.1, 0.0955, 0.09100000000000001, 0.08650000000000001, 0.082, 0.0775, 0.073, 0.0685, 0.064,
     0.05950000000000001, 0.05500000000000001, 0.0505, 0.046000000000000006, 0.0415, 0.037000000000000005,
     0.0325, 0.027999999999999997, 0.023500000000000004, 0.019, 0.014500000000000006]),
    ("step", 4, 5,
     {"name": "Step", "learning_rate": 0.1, "step_size": 1, "gamma": 0.5},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025, 0.025, 0.0125, 0.0125,
     0.0125, 0.0125, 0.0125]),
    ("step_warmup", 4, 5,
     {"name": "Step", "learning_rate": 0.1, "step_size": 1.5, "gamma": 0.5, "warmup_epoch": 1},
     [0.0, 0.02, 0.04, 0.06000000000000001, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05,
     0.05, 0.05, 0.05, 0.025]),
    ("step_by_epoch_warmup", 5, 3,
     {"name": "Step", "learning_rate": 0.1, "step_size": 2, "gamma": 0.1, "warmup_epoch": 1, "by_epoch": True},
     [0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002]),
    ("piecewise", 4, 5,
     {"name": "Piecewise", "decay_epochs": [1, 3], "values": [0.1, 0.05, 0.01]},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.01, 0.01, 0.01,
     0.01, 0.01]),
    ("piecewise_warmup", 4, 5,
     {"name": "Piecewise", "decay_epochs": [2, 3], "values": [0.1, 0.05, 0.001], "warmup_epoch": 1},
     [0.0, 0.02, 0.04, 0.06000000000000001, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05,
     0.05, 0.05, 0.05]),
    ("piecewise_by_epoch_last_epoch", 5, 3,
     {"name": "Piecewise", "decay_epochs": [2, 4], "values": [0.00035, 3.5e-05, 3.5e-06], "by_epoch": True,
      "last_epoch": 0},
     [0.00035, 0.00035, 0.00035, 3.5e-05, 3.5e-05, 3.5e-05, 3.5e-05, 3.5e-05, 3.5e-05, 3.5e-06, 3.5e-06, 3.5e-06,
     3.5e-06, 3.5e-06, 3.5e-06]),
    ("piecewise_learning_rate_rule_short", 4, 5,
     {"name": "Piecewise", "learning_rate": 0.1, "decay_epochs": [1, 2], "values": [0.1, 0.01, 0.001]},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("piecewise_learning_rate_rule", 65, 1,
     {"name": "Piecewise", "learning_rate": 0.1, "decay_epochs": [1, 2], "values": [0.1, 0.01, 0.001],
      "warmup_epoch": 5},
     [0.0, 0.02, 0.04, 0.06000000000000001, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
     0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002]),
    ("multistep", 4, 5,
     {"name": "MultiStepDecay", "learning_rate": 0.1, "milestones": [1, 3], "gamma": 0.5},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025,
     0.025, 0.025]),
    ("multistep_warmup_fraction", 4, 5,
     {"name": "MultiStepDecay", "learning_rate": 0.1, "milestones": [2, 3], "warmup_epoch": 0.5},
     [0.0, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.0010000000000000002,
     0.0010000000000000002, 0.0010000000000000002]),
    ("multistep_by_epoch", 5, 3,
     {"name": "MultiStepDecay", "learning_rate": 0.1, "milestones": [2, 4], "by_epoch": True},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.010000000000000002, 0.010000000000000002, 0.010000000000000002,
     0.010000000000000002, 0.010000000000000002, 0.010000000000000002, 0.0010000000000000002,
     0.0010000000000000002, 0.0010000000000000002]),
    ("constlr", 4, 5,
     {"name": "ConstLR", "learning_rate": 0.1},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("constlr_warmup", 4, 5,
     {"name": "ConstLR", "learning_rate": 0.1, "warmup_epoch": 2, "warmup_start_lr": 0.01},
     [0.01, 0.019000000000000003, 0.028000000000000004, 0.037000000000000005, 0.046000000000000006,
     0.05500000000000001, 0.064, 0.07300000000000001, 0.082, 0.091, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1,
     0.1]),
    ("constant", 2, 3,
     {"name": "Constant", "learning_rate": 0.1},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("constant_ignores_warmup", 4, 5,
     {"name": "Constant", "learning_rate": 0.1, "warmup_epoch": 2},
     [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    ("no_name", 2, 5,
     {"learning_rate": 0.05},
     [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05]),
    ("cosine_two_epochs", 2, 5,
     {"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1},
     [0.0, 0.02, 0.04, 0.06000000000000001, 0.08, 0.1, 0.09045084971874738, 0.06545084971874737,
     0.03454915028125263, 0.009549150281252633]),
]


def trainer_rates(lr_cfg, epochs, step_each_epoch, count, log=None):
    """The rates the trainer uses at iterations 0..count-1 (its schedule, stepped once per iteration)."""
    _, schedule = optimizer_settings({"name": "Momentum", "lr": lr_cfg}, step_each_epoch, epochs,
                                     log=log or (lambda _: None))
    lr = build_lr_scheduler({"lr_scheduler": schedule}, count, step_each_epoch)
    rates = []
    for _ in range(count):
        rates.append(lr())
        lr.step()
    return rates


@pytest.mark.parametrize("case, epochs, step_each_epoch, lr_cfg, expected", RATES, ids=[r[0] for r in RATES])
def test_rate_at_every_iteration_is_paddleclas_rate(case, epochs, step_each_epoch, lr_cfg, expected):
    assert len(expected) == epochs * step_each_epoch
    got = trainer_rates(lr_cfg, epochs, step_each_epoch, len(expected))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_every_supported_type_is_checked_with_and_without_warmup():
    from slim.tasks.ppcls.schedule import SUPPORTED
    for name in SUPPORTED:
        cfgs = [lr for _, _, _, lr, _ in RATES if lr.get("name") == name]
        assert any(not c.get("warmup_epoch") for c in cfgs), name
        if name != "Constant":  # PaddleClas's Constant never warms up (checked: constant_ignores_warmup)
            assert any(c.get("warmup_epoch") for c in cfgs), name


def case(name):
    return next(r for r in RATES if r[0] == name)


def test_paddleclas_warnings_are_logged():
    lines = []
    trainer_rates({"name": "Cosine", "learning_rate": 0.04, "warmup_epoch": 5}, 3, 45, 3, lines.append)
    assert any("warmup_epoch 5 is not below Global.epochs 3: set to 3, as PaddleClas does" in m for m in lines)
    assert any("LinearWarmup over 135 step(s)" in m for m in lines)  # 3 x 45: the quick start with -o epochs=3
    lines = []
    trainer_rates({"name": "Constant", "learning_rate": 0.1, "warmup_epoch": 2}, 4, 5, 1, lines.append)
    assert any("PaddleClas's Constant has no warm-up" in m for m in lines)
    lines = []
    trainer_rates({"name": "Piecewise", "learning_rate": 0.1, "decay_epochs": [1], "values": [0.1, 0.01]}, 65, 1, 1,
                  lines.append)
    assert any("decay_epochs [30, 60] and values [0.1, 0.01, 0.001]" in m for m in lines)


def test_quick_start_warmup_clipped_to_the_epochs_reaches_the_rate_at_the_end():
    rates = trainer_rates({"name": "Cosine", "learning_rate": 0.04, "warmup_epoch": 5}, 3, 45, 135)
    assert rates == pytest.approx([0.04 * i / 135 for i in range(135)], rel=1e-12, abs=1e-15)


def test_iters_is_a_run_of_iters_over_step_each_epoch_epochs():
    name, epochs, n, lr_cfg, expected = case("cosine_two_epochs")  # PaddleClas: 2 epochs of 5
    assert trainer_rates(lr_cfg, Fraction(10, n), n, 10) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # 7 iterations of 5 per epoch: warm-up 1 epoch (5 iterations), then cosine over the 2 left
    got = trainer_rates(lr_cfg, Fraction(7, n), n, 7)
    assert got == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.05], rel=1e-12, abs=1e-15)
    # by_epoch: whole epochs (7 iterations of 5 -> 2 epochs), the first epoch's rate held for its iterations
    by_epoch = dict(lr_cfg, by_epoch=True, warmup_epoch=0)
    assert trainer_rates(by_epoch, Fraction(7, n), n, 7) == pytest.approx([0.1] * 5 + [0.05] * 2)


def test_a_resumed_schedule_gives_the_same_rates():
    _, epochs, n, lr_cfg, expected = case("cosine_by_epoch_warmup")
    _, schedule = optimizer_settings({"lr": lr_cfg}, n, epochs, log=lambda _: None)
    lr = build_lr_scheduler({"lr_scheduler": schedule}, epochs * n, n)
    for _ in range(8):
        lr.step()
    state = lr.state_dict()
    _, schedule = optimizer_settings({"lr": lr_cfg}, n, epochs, log=lambda _: None)
    resumed = build_lr_scheduler({"lr_scheduler": schedule}, epochs * n, n)
    resumed.set_state_dict(state)
    rates = []
    for _ in range(8, len(expected)):
        rates.append(resumed())
        resumed.step()
    assert rates == pytest.approx(expected[8:], rel=1e-12, abs=1e-15)
    rate = PaddleClasSchedule(lr_cfg, epochs, n, log=lambda _: None).rate_fn()
    order = [9, 2, 14, 0, 14, 5]  # any order (a resume asks for an earlier iteration)
    assert [rate(i) for i in order] == pytest.approx([expected[i] for i in order], rel=1e-12, abs=1e-15)


def test_iterations_per_epoch_are_paddleclas_loader_length():
    """step_each_epoch is len(DistributedBatchSampler) (PaddleClas's train loader), drop_last or not."""
    from slim.engine.data import ResumableBatchSampler

    class Items(paddle.io.Dataset):
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return i

    for n, batch in ((30, 8), (32, 8), (7, 8), (1000, 32), (1437, 32)):
        for drop_last in (False, True):
            if drop_last and n < batch:
                continue
            theirs = len(paddle.io.DistributedBatchSampler(Items(n), batch, shuffle=True, drop_last=drop_last))
            assert len(ResumableBatchSampler(n, batch, True, drop_last)) == theirs, (n, batch, drop_last)


def test_bad_schedules_are_one_clear_error():
    from slim.distill.errors import ConfigError
    for lr_cfg, message in (
            ({"name": "OneCycleLR", "max_learning_rate": 0.1}, "name 'OneCycleLR' is not supported"),
            ({"name": "Step", "learning_rate": 0.1, "step_size": 1}, "Step needs step_size"),
            ({"name": "Step", "learning_rate": 0.1, "step_size": 0.1, "gamma": 0.1}, "gives 0 steps"),
            ({"name": "Piecewise", "decay_epochs": [1, 2], "values": [0.1]}, "one more value than epochs"),
            ({"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 1, "warmup_start_lr": 0.2}, "must be below")):
        with pytest.raises(ConfigError, match=message):
            trainer_rates(lr_cfg, 4, 5, 1)
    lines = []
    trainer_rates({"name": "Cosine", "learning_rate": 0.1, "warmup_epoch": 0.5}, 4, 5, 1, lines.append)
    assert any("T_max is 17.5 steps, not a whole number (PaddleClas stops here" in m for m in lines)
