"""The teacher-output cache: a cached run replays the uncached run's losses without building the teacher,
a changed teacher or data seed never reads old entries, a killed write is refilled, two processes share it,
a full disk is refused, and top-k logits keep FKD's soft labels."""
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from slim.apps.launch import load_task_config
from slim.distill.errors import ConfigError
from slim.engine.teacher_cache import TeacherCache, part
from tests.helpers.cli import ROOT, SCRIPTS, logged_losses as losses, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg

ITERS = 6  # 6 train slices, batch 2: 3 iterations per epoch, so two epochs
COMMON = ["--iters", ITERS, "--log_iters", 1, "--save_interval", 1000, "--device", "cpu"]


def save_random_teacher(config, path, seed):
    task, cfg = load_task_config(config)
    paddle.seed(seed)
    paddle.save(task.build_model(cfg).state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_cache")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    paths["teacher_a"] = save_random_teacher(paths["teacher"], root / "teacher_a.pdparams", 1)
    paths["teacher_b"] = save_random_teacher(paths["teacher"], root / "teacher_b.pdparams", 2)
    paths["uncached"] = root / "uncached"
    assert distill(paths, paths["uncached"], "--seed", 3) == 0
    return paths


def distill(seg, save_dir, *extra, teacher="teacher_a"):
    return run_tool("distill_train", "-t", seg["teacher"], "-c", seg["student"], "--teacher_pretrained",
                    seg[teacher], *COMMON, "--save_dir", save_dir, *extra)


def record(save_dir):
    with open(os.path.join(save_dir, "record.txt")) as f:
        return f.read()


def cache_line(save_dir):
    return [line for line in record(save_dir).splitlines() if "sample(s) read" in line][-1]


def assert_same_losses(a, b, rtol=0.0, atol=0.0):
    la, lb = losses(a), losses(b)
    assert [i for i, _ in la] == [i for i, _ in lb] == list(range(1, ITERS + 1))
    for (i, ra), (_, rb) in zip(la, lb):
        assert sorted(ra) == sorted(rb)
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=rtol, abs=atol), (i, key, ra[key], rb[key])


def test_cached_run_replays_the_uncached_losses_without_building_the_teacher(seg):
    cache = seg["root"] / "cache32"
    fill, cached = seg["root"] / "fill32", seg["root"] / "cached32"
    assert distill(seg, fill, "--seed", 3, "--teacher_cache", cache, "--teacher_cache_dtype", "float32") == 0
    assert "0 sample(s) read, 12 computed" in cache_line(fill)
    assert distill(seg, cached, "--seed", 3, "--teacher_cache", cache, "--teacher_cache_dtype", "float32") == 0
    assert "12 sample(s) read, 0 computed" in cache_line(cached)
    log = record(cached)
    assert "teacher weights" not in log and "teacher:" not in log  # never built, never loaded
    assert_same_losses(fill, seg["uncached"])  # float32 entries: bit for bit
    assert_same_losses(cached, seg["uncached"])
    assert os.path.isfile(cache / "epoch_00000" / "valid.npy") and os.path.isfile(cache / "epoch_00001" / "valid.npy")


def test_float16_entries_replay_within_rounding(seg):
    cache = seg["root"] / "cache16"
    for name in ("fill16", "cached16"):
        assert distill(seg, seg["root"] / name, "--seed", 3, "--teacher_cache", cache) == 0
    assert "12 sample(s) read, 0 computed" in cache_line(seg["root"] / "cached16")
    # the filling run trains on the stored float16 values, as every run reading them: the same losses
    assert_same_losses(seg["root"] / "fill16", seg["root"] / "cached16")
    # against the teacher's float32 outputs: equal within float16's rounding where the student weights are
    # the same (the first step); later steps follow their own, slightly different, gradients
    (_, first), (_, reference) = losses(seg["root"] / "cached16")[0], losses(seg["uncached"])[0]
    for key in first:
        assert first[key] == pytest.approx(reference[key], rel=1e-3), key
    assert np.load(cache / "epoch_00000" / "the_model_output_0.npy", mmap_mode="r").dtype == np.float16


def test_data_seed_keeps_the_views_while_the_student_seed_changes(seg, capsys):
    cache = seg["root"] / "cache_seeds"
    assert distill(seg, seg["root"] / "seed3", "--seed", 3, "--teacher_cache", cache) == 0
    other = seg["root"] / "seed5_data3"
    assert distill(seg, other, "--seed", 5, "--data_seed", 3, "--teacher_cache", cache) == 0
    assert "12 sample(s) read, 0 computed" in cache_line(other)
    assert losses(other) != losses(seg["root"] / "seed3")  # another student initialisation
    capsys.readouterr()
    # --seed 5 alone moves the data seed too: other views, so the entries are not read
    assert distill(seg, seg["root"] / "seed5", "--seed", 5, "--teacher_cache", cache) == 2
    err = capsys.readouterr().err
    assert "data seed (cache: --data_seed 3; this run: --data_seed 5)" in err and "--teacher_cache_rebuild" in err
    assert not os.path.exists(seg["root"] / "seed5" / "history.jsonl")


def test_a_changed_teacher_never_reads_the_old_entries(seg, capsys):
    cache = seg["root"] / "cache_teacher"
    assert distill(seg, seg["root"] / "with_a", "--seed", 3, "--teacher_cache", cache,
                   "--teacher_cache_dtype", "float32") == 0
    before = {p: os.path.getmtime(p) for p in cache.rglob("*.npy")}
    capsys.readouterr()
    assert distill(seg, seg["root"] / "with_b", "--seed", 3, "--teacher_cache", cache,
                   "--teacher_cache_dtype", "float32", teacher="teacher_b") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The teacher cache") and "teacher weights (cache: sha256" in err
    assert "--teacher_cache_rebuild" in err and "Traceback" not in err
    assert {p: os.path.getmtime(p) for p in cache.rglob("*.npy")} == before  # nothing of the cache touched
    # asked to rebuild: the old entries go, the new teacher fills the cache, as an uncached run with it
    rebuilt = seg["root"] / "with_b_rebuilt"
    assert distill(seg, rebuilt, "--seed", 3, "--teacher_cache", cache, "--teacher_cache_dtype", "float32",
                   "--teacher_cache_rebuild", teacher="teacher_b") == 0
    assert "0 sample(s) read, 12 computed" in cache_line(rebuilt) and "rebuilt" in record(rebuilt)
    assert distill(seg, seg["root"] / "uncached_b", "--seed", 3, teacher="teacher_b") == 0
    assert_same_losses(rebuilt, seg["root"] / "uncached_b")
    assert losses(rebuilt) != losses(seg["root"] / "with_a")


def test_an_entry_of_a_killed_run_is_refilled_not_read(seg):
    cache = seg["root"] / "cache_killed"
    cmd = [sys.executable, os.path.join(ROOT, SCRIPTS["distill_train"]), "-t", seg["teacher"], "-c", seg["student"],
           "--teacher_pretrained", seg["teacher_a"], *[str(a) for a in COMMON], "--seed", "3",
           "--save_dir", str(seg["root"] / "killed"), "--teacher_cache", str(cache), "--teacher_cache_dtype", "float32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", SLIM_TEST_KILL_DURING_CACHE_WRITE="2"))
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-2000:]
    valid = np.load(cache / "epoch_00000" / "valid.npy")
    rows = np.load(cache / "epoch_00000" / "the_model_output_0.npy")
    assert valid.sum() == 2  # the first batch; the second was written but not marked valid
    assert np.abs(rows[valid == 0]).sum() > 0  # its rows are on disk, and must not be read
    after = seg["root"] / "after_kill"
    assert distill(seg, after, "--seed", 3, "--teacher_cache", cache, "--teacher_cache_dtype", "float32") == 0
    log = record(after)
    assert "2 sample(s) read, 10 computed" in cache_line(after)
    assert "entries missing from iteration 2: building the teacher" in log
    assert_same_losses(after, seg["uncached"])


def test_two_processes_fill_and_read_one_cache(seg, tmp_path):
    cache = tmp_path / "cache"

    def launch(name):
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
               str(tmp_path / f"log_{name}"), os.path.join(ROOT, SCRIPTS["distill_train"]), "-t", seg["teacher"],
               "-c", seg["student"], "--teacher_pretrained", seg["teacher_a"], "--iters", "4", "--log_iters", "1",
               "--batch_size", "1", "--seed", "3", "--save_dir", str(tmp_path / name), "--teacher_cache", str(cache),
               "--teacher_cache_dtype", "float32"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        logs = "".join(p.read_text() for p in sorted((tmp_path / f"log_{name}").glob("workerlog.*")))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs[-4000:]
        return logs

    launch("fill")
    valid = np.concatenate([np.load(p) for p in sorted(cache.glob("epoch_*/valid.npy"))])
    assert valid.sum() == 8  # 4 iterations x 1 sample x 2 processes, each rank wrote its own
    launch("cached")
    assert "8 sample(s) read, 0 computed" not in record(tmp_path / "fill")
    assert "0 sample(s) read, 4 computed" in cache_line(tmp_path / "fill")  # rank 0's share, from the teacher
    assert "4 sample(s) read, 0 computed" in cache_line(tmp_path / "cached")  # rank 0's share
    la, lb = losses(tmp_path / "fill"), losses(tmp_path / "cached")
    assert len(la) == 4 and la == lb


def test_a_full_disk_is_refused_before_anything_is_written(seg, capsys, monkeypatch):
    cache = seg["root"] / "cache_full"
    monkeypatch.setenv("SLIM_TEST_FREE_BYTES", "1000")
    assert distill(seg, seg["root"] / "full", "--seed", 3, "--teacher_cache", cache) == 2
    err = capsys.readouterr().err
    assert "The teacher cache would need about" in err and "1000 B free" in err and "nothing was written" in err
    assert not list(cache.glob("epoch_*"))


def test_cls_topk_logits_fill_and_read(tmp_path):
    from tests.helpers.cls_fixtures import make_tiny_cls
    paths = make_tiny_cls(str(tmp_path))
    teacher = save_random_teacher(paths["teacher"], tmp_path / "t.pdparams", 4)
    cache = tmp_path / "cache"
    for name in ("fill", "cached"):
        assert run_tool("distill_train", "-t", paths["teacher"], "-c", paths["student"], "--teacher_pretrained",
                        teacher, "--iters", 4, "--log_iters", 1, "--device", "cpu", "--seed", 0, "--save_dir",
                        tmp_path / name, "--teacher_cache", cache, "--teacher_cache_topk", 3) == 0
    assert "64 sample(s) read, 0 computed" in cache_line(tmp_path / "cached")
    assert "top-3" in record(tmp_path / "fill")
    assert os.path.isfile(cache / "epoch_00000" / "the_model_output.values.npy")


# ----- the store itself ----------------------------------------------------------------------------------
def make_cache(root, dtype="float32", topk=None, **parts):
    parts = {k: part(v) for k, v in (parts or {"teacher weights": "A"}).items()}
    return TeacherCache(str(root), parts, dtype, topk, log=lambda *_: None)


def test_store_and_lookup_by_epoch_and_index(tmp_path):
    cache = make_cache(tmp_path)
    assert cache.open(10) is False
    feats = {"logits": np.random.RandomState(0).randn(3, 4, 2, 2).astype(np.float32)}
    cache.create(cache.tensor_layout(feats))
    keys = [(0, 7), (1, 2), (0, 1)]  # a batch may cross an epoch boundary
    assert cache.lookup(keys) is None
    cache.store(keys, feats)
    got = cache.lookup(keys)
    np.testing.assert_array_equal(got["logits"], feats["logits"])
    np.testing.assert_array_equal(cache.lookup([(0, 1)])["logits"], feats["logits"][2:])
    assert cache.lookup([(0, 1), (0, 2)]) is None  # one missing sample: the batch goes to the teacher
    with pytest.raises(ConfigError, match="per-sample shape"):
        cache.store([(0, 3)], {"logits": np.zeros((1, 4, 3, 3), np.float32)})
    with pytest.raises(ConfigError, match="one row per sample"):
        cache.store([(0, 3), (0, 4)], {"logits": np.zeros((1, 4, 2, 2), np.float32)})
    cache.close()
    again = make_cache(tmp_path)
    assert again.open(10) is True
    np.testing.assert_array_equal(again.lookup(keys)["logits"], feats["logits"])


def test_fingerprint_mismatch_names_every_change(tmp_path):
    cache = make_cache(tmp_path, **{"teacher weights": "A", "data seed": "--data_seed 0"})
    cache.open(5)
    cache.create(cache.tensor_layout({"x": np.zeros((1, 3), np.float32)}))
    other = make_cache(tmp_path, "float16", **{"teacher weights": "B", "data seed": "--data_seed 0"})
    with pytest.raises(ConfigError) as e:
        other.open(5)
    msg = str(e.value)
    assert "teacher weights (cache: A; this run: B)" in msg and "storage (cache: float32; this run: float16)" in msg
    assert "data seed" not in msg and "--teacher_cache_rebuild" in msg


def test_topk_keeps_the_top_probabilities_and_spreads_the_rest(tmp_path):
    z = np.random.RandomState(1).randn(4, 10).astype(np.float32) * 3
    cache = make_cache(tmp_path, topk=3)
    cache.open(4)
    cache.create(cache.tensor_layout({"logits": z}))
    cache.store([(0, i) for i in range(4)], {"logits": z})
    got = cache.lookup([(0, i) for i in range(4)])["logits"]

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, q = softmax(z.astype(np.float64)), softmax(got.astype(np.float64))
    for row in range(4):
        top = np.argsort(-z[row])[:3]
        rest = np.setdiff1d(np.arange(10), top)
        np.testing.assert_allclose(q[row, top], p[row, top], rtol=1e-5)  # the K largest, as they were
        np.testing.assert_allclose(q[row, rest], (1 - p[row, top].sum()) / 7, rtol=1e-5)  # the rest, evenly


def test_a_pipeline_stage_fills_and_reads_its_teacher_cache(tmp_path):
    from tests.helpers.depth_fixtures import make_depth_configs
    from tests.helpers.seg_fixtures import write_yaml
    configs = make_depth_configs(str(tmp_path))
    cache = tmp_path / "cache"
    stage = {"name": "distil", "teacher": {"config": configs["deep"]}, "student": configs["shallow"], "iters": 4,
             "teacher_cache": {"dir": str(cache), "dtype": "float32"}}
    pipeline = write_yaml(str(tmp_path / "p.yml"), {"defaults": {"seed": 0, "log_iters": 1, "save_interval": 4},
                                                    "stages": [stage]})
    for name in ("first", "second"):
        assert run_tool("distill_train", "--pipeline", pipeline, "--save_dir", tmp_path / name,
                        "--allow_untrained_teacher") == 0
    assert "0 sample(s) read, 8 computed" in cache_line(tmp_path / "first" / "1_distil")
    assert "8 sample(s) read, 0 computed" in cache_line(tmp_path / "second" / "1_distil")
    assert losses(tmp_path / "first" / "1_distil")[-1] == losses(tmp_path / "second" / "1_distil")[-1]
