"""Nothing is trained on silently damaged data: a truncated or bit-flipped teacher-cache entry is refilled, never
read; a checkpoint whose bytes changed is skipped by `auto` and refused when named (`--skip_verify` loads it
anyway); a full disk ends in one line, with the partial output removed and earlier checkpoints kept."""
import os
import shutil
import subprocess

import numpy as np
import paddle
import pytest

from slim.apps.launch import load_task_config
from slim.engine import storage
from slim.engine.checkpoint import read_checkpoint, set_verify
from slim.engine.teacher_cache import TeacherCache, part
from tests.helpers.cli import logged_losses as losses, run_tool
from tests.helpers.seg_fixtures import make_tiny_seg

ITERS = 6  # 6 train slices, batch 2: 3 iterations per epoch, two epochs
COMMON = ["--iters", ITERS, "--log_iters", 1, "--device", "cpu", "--seed", 3]
OUTPUT = "the_model_output_0.npy"  # the teacher's logits in the cache


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    """Tiny nuclei data, a random teacher, an uncached reference run, a filled float32 cache and a plain
    training run with iter_2, iter_4 and iter_6."""
    root = tmp_path_factory.mktemp("integrity")
    paths = make_tiny_seg(str(root))
    paths["root"] = root
    task, cfg = load_task_config(paths["teacher"])
    paddle.seed(1)
    paths["teacher_w"] = str(root / "teacher.pdparams")
    paddle.save(task.build_model(cfg).state_dict(), paths["teacher_w"])
    paths["uncached"] = root / "uncached"
    assert distill(paths, paths["uncached"]) == 0
    paths["cache"] = root / "cache"
    assert distill(paths, root / "fill", "--teacher_cache", paths["cache"], "--teacher_cache_dtype", "float32") == 0
    assert_same_losses(root / "fill", paths["uncached"])
    paths["unbroken"] = root / "unbroken"
    assert train(paths, paths["unbroken"]) == 0
    return paths


@pytest.fixture(autouse=True)
def verify_again():
    """--skip_verify switches checking off for the whole process; in-process runs share one."""
    yield
    set_verify(True)


def distill(seg, save_dir, *extra):
    return run_tool("distill_train", "-t", seg["teacher"], "-c", seg["student"], "--teacher_pretrained",
                    seg["teacher_w"], *COMMON, "--save_interval", 1000, "--save_dir", save_dir, *extra)


def train(seg, save_dir, *extra):
    return run_tool("train", "--config", seg["teacher"], *COMMON, "--save_interval", 2, "--save_dir", save_dir,
                    *extra)


def cached_distill(seg, save_dir, cache, *extra):
    return distill(seg, save_dir, "--teacher_cache", cache, "--teacher_cache_dtype", "float32", *extra)


def record(save_dir):
    with open(os.path.join(save_dir, "record.txt")) as f:
        return f.read()


def cache_counts(log):
    line = [line for line in log.splitlines() if "sample(s) read" in line][-1]
    words = line.split(": ")[-1].split()
    return int(words[0]), int(words[3])


def assert_same_losses(a, b):
    la, lb = losses(a), losses(b)
    assert [i for i, _ in la] == list(range(1, ITERS + 1)) and la == lb


def copy_cache(seg, name):
    dest = seg["root"] / name
    shutil.copytree(seg["cache"], dest)
    return dest


def flip(path, offset, count=16):
    with open(path, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(count))
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def row_offset(path, row):
    """The byte offset of `row` in a .npy shard."""
    array = np.load(path, mmap_mode="r")
    return array.offset + row * array[0].nbytes


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- the teacher cache -------------------------------------------------------------------------------------
def test_a_truncated_shard_is_refilled_not_read(seg):
    cache = copy_cache(seg, "cache_truncated")
    shard = cache / "epoch_00000" / OUTPUT
    os.truncate(shard, os.path.getsize(shard) // 2)
    out = seg["root"] / "after_truncation"
    assert cached_distill(seg, out, cache) == 0
    log = record(out)
    # 6 rows of 32 KB after a 128-byte header, cut at 96 KB: rows 0 and 1 are whole
    assert f"{shard} is truncated (98368 of 196736 bytes): the entries of samples 2 to 5 of epoch 0" in log
    read, computed = cache_counts(log)
    assert read + computed == ITERS * 2 and computed >= 4  # a batch holding a cut sample is recomputed whole
    assert_same_losses(out, seg["uncached"])  # float32: exactly the uncached run
    assert os.path.getsize(shard) == os.path.getsize(seg["cache"] / "epoch_00000" / OUTPUT)


def test_a_bit_flipped_entry_fails_its_checksum_and_is_refilled(seg, capsys):
    cache = copy_cache(seg, "cache_flipped")
    shard = cache / "epoch_00001" / OUTPUT
    flip(shard, row_offset(shard, 4) + 100)
    before = snapshot(cache)
    assert run_tool("cache", "verify", cache) == 3
    report = capsys.readouterr().out
    assert "12 cached entries checked, 1 damaged" in report and "sample(s) 4" in report
    assert snapshot(cache) == before  # verify alone changes nothing
    out = seg["root"] / "after_flip"
    assert cached_distill(seg, out, cache) == 0
    log = record(out)
    assert f"1 entry of {cache / 'epoch_00001'} (epoch 1, sample(s) 4) fail their checksum" in log
    assert "(1 of them had failed their checksum)" in log
    assert_same_losses(out, seg["uncached"])
    capsys.readouterr()
    assert run_tool("cache", "verify", cache) == 0  # refilled whole
    assert "12 cached entries checked, 0 damaged" in capsys.readouterr().out


def test_verify_repair_marks_damaged_entries_missing(seg, capsys):
    cache = copy_cache(seg, "cache_repair")
    shard = cache / "epoch_00000" / OUTPUT
    flip(shard, row_offset(shard, 1) + 8)
    os.truncate(cache / "epoch_00001" / OUTPUT, os.path.getsize(cache / "epoch_00001" / OUTPUT) - 10)
    assert run_tool("cache", "verify", cache, "--repair") == 3
    report = capsys.readouterr().out
    assert "2 damaged, 1 truncated shard(s)" in report and "marked missing" in report  # sample 5 was cut
    assert np.load(cache / "epoch_00000" / "valid.npy").tolist() == [1, 0, 1, 1, 1, 1]
    assert np.load(cache / "epoch_00001" / "valid.npy").tolist() == [1, 1, 1, 1, 1, 0]
    assert run_tool("cache", "verify", cache) == 0
    out = seg["root"] / "after_repair"
    assert cached_distill(seg, out, cache) == 0
    read, computed = cache_counts(record(out))
    assert read + computed == ITERS * 2 and computed >= 2  # the two entries' batches are recomputed
    assert_same_losses(out, seg["uncached"])


def test_an_unreadable_shard_header_is_refused_until_repaired(seg, capsys):
    cache = copy_cache(seg, "cache_header")
    shard = cache / "epoch_00000" / OUTPUT
    flip(shard, 0, 8)  # the .npy magic
    out = seg["root"] / "header"
    assert cached_distill(seg, out, cache) == 2
    err = capsys.readouterr().err
    assert f"has a damaged shard: {shard}: its header cannot be read" in err and "--teacher_cache_repair" in err
    assert cached_distill(seg, seg["root"] / "header_repaired", cache, "--teacher_cache_repair") == 0
    log = record(seg["root"] / "header_repaired")
    assert "1 unreadable epoch folder(s)" in log and "6 sample(s) read, 6 computed" in log
    assert_same_losses(seg["root"] / "header_repaired", seg["uncached"])


def test_topk_entries_carry_checksums_too(tmp_path):
    cache = TeacherCache(str(tmp_path / "c"), {"teacher": part("t")}, "float16", topk=3, log=lambda *_: None)
    assert not cache.open(8)
    logits = np.random.RandomState(0).randn(4, 10).astype("float32")
    cache.create(cache.tensor_layout({"logits": logits}))
    keys = [(0, i) for i in range(4)]
    cache.store(keys, {"logits": logits})
    assert cache.lookup(keys) is not None
    cache.close()
    flip(tmp_path / "c" / "epoch_00000" / "logits.indices.npy", row_offset(tmp_path / "c" / "epoch_00000" /
                                                                          "logits.indices.npy", 2), 4)
    reopened = TeacherCache(str(tmp_path / "c"), {"teacher": part("t")}, "float16", topk=3, log=lambda *_: None)
    assert reopened.open(8)
    assert reopened.lookup(keys) is None and reopened.damaged_samples == 1
    assert reopened.lookup(keys[:2]) is not None
    assert np.asarray(reopened.open_epoch(0).valid).tolist() == [1, 1, 0, 1, 0, 0, 0, 0]
    reopened.close()


# ----- checkpoints -------------------------------------------------------------------------------------------
def damaged_copy(seg, name):
    """iter_2 and iter_4 of the unbroken run, with 16 bytes flipped inside a tensor of iter_4's weights."""
    out = seg["root"] / name
    os.makedirs(out)
    for n in (2, 4):
        shutil.copytree(seg["unbroken"] / f"iter_{n}", out / f"iter_{n}")
    weights = out / "iter_4" / "model.pdparams"
    flip(weights, os.path.getsize(weights) // 2)
    paddle.load(str(weights))  # the pickle still reads: only the manifest can tell
    return out


def assert_bit_equal(dir_a, dir_b):
    for name in ("model.pdparams", "model.pdopt"):
        a, b = paddle.load(str(dir_a / name)), paddle.load(str(dir_b / name))
        assert sorted(a) == sorted(b)
        for key in a:
            if isinstance(a[key], dict):
                assert a[key] == b[key], key
            else:
                assert np.array_equal(a[key].numpy(), b[key].numpy()), key


def test_every_checkpoint_has_a_manifest_of_its_files(seg):
    import json
    with open(seg["unbroken"] / "iter_6" / "manifest.json") as f:
        listed = json.load(f)["files"]
    assert sorted(listed) == ["model.pdopt", "model.pdparams", "train_state.pdstates"]
    for name, entry in listed.items():
        assert entry["bytes"] == os.path.getsize(seg["unbroken"] / "iter_6" / name)
        assert entry["sha256"] == storage.sha256_of(seg["unbroken"] / "iter_6" / name)


def test_auto_skips_a_bit_flipped_checkpoint_and_resumes_from_the_one_before(seg):
    out = damaged_copy(seg, "flipped_auto")
    assert train(seg, out, "--resume_model", "auto") == 0
    log = record(out)
    assert f"--resume_model auto: skipped {out / 'iter_4'}: the sha256 of model.pdparams" in log
    assert "its bytes changed after it was saved" in log
    assert f"resumed from {out / 'iter_2'} at iteration 2" in log
    assert_bit_equal(seg["unbroken"] / "iter_6", out / "iter_6")


def test_a_named_damaged_checkpoint_is_refused_and_skip_verify_loads_it(seg, capsys):
    out = damaged_copy(seg, "flipped_named")
    before = snapshot(out)
    assert train(seg, out, "--resume_model", out / "iter_4") == 2
    err = capsys.readouterr().err
    assert f"Checkpoint {out / 'iter_4'} is damaged: the sha256 of model.pdparams" in err
    assert "--skip_verify loads it anyway" in err
    assert snapshot(out) == before
    for tool, extra in (("eval", []), ("export", ["--save_dir", seg["root"] / "export_damaged"])):
        assert run_tool(tool, "--config", seg["teacher"], "--model_path", out / "iter_4", "--device", "cpu",
                        *extra) == 2
        err = capsys.readouterr().err
        assert f"{out / 'iter_4' / 'model.pdparams'} is damaged" in err and "--skip_verify" in err
    assert not os.path.exists(seg["root"] / "export_damaged" / "model.json")
    assert run_tool("eval", "--config", seg["teacher"], "--model_path", out / "iter_4", "--device", "cpu",
                    "--skip_verify") == 0
    assert train(seg, out, "--resume_model", out / "iter_4", "--skip_verify") == 0


def test_a_checkpoint_without_a_manifest_loads_as_before(seg):
    out = damaged_copy(seg, "no_manifest")
    os.remove(out / "iter_4" / "manifest.json")
    assert run_tool("eval", "--config", seg["teacher"], "--model_path", out / "iter_4", "--device", "cpu") == 0
    assert read_checkpoint(str(out / "iter_4"))["state"]["iter"] == 4


# ----- a full disk -------------------------------------------------------------------------------------------
@pytest.fixture
def enospc(monkeypatch):
    def arm(spec):
        monkeypatch.setenv("SLIM_TEST_ENOSPC", spec)
        storage._FAULT_COUNTS.clear()
    yield arm
    storage._FAULT_COUNTS.clear()


def assert_one_line(err, *parts):
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    for p in parts:
        assert p in lines[0], lines[0]


def test_a_full_disk_mid_save_keeps_the_earlier_checkpoint(seg, capsys, enospc):
    enospc("checkpoint:2")
    out = seg["root"] / "full_mid_save"
    assert train(seg, out) == 2
    assert_one_line(capsys.readouterr().err, "No space left on the device while writing the checkpoint iter_4 "
                    f"(model.pdopt) (", f"to {out / 'iter_4' / 'model.pdopt'}: ", " free. The partial iter_4 was "
                    f"removed; earlier checkpoints in {out} are kept", "--resume_model auto")
    assert sorted(n for n in os.listdir(out) if "iter_" in n) == ["iter_2"]
    assert read_checkpoint(str(out / "iter_2"))["state"]["iter"] == 2


def test_a_checkpoint_larger_than_the_free_space_is_refused_before_writing(seg, capsys, monkeypatch):
    monkeypatch.setenv("SLIM_TEST_FREE_BYTES", "1000")
    out = seg["root"] / "full_before"
    assert train(seg, out) == 2
    assert_one_line(capsys.readouterr().err, "The checkpoint iter_2 needs about ", "has 1000 B free; nothing was "
                    "written")
    assert not [n for n in os.listdir(out) if "iter_" in n]


@pytest.mark.parametrize("kind,what", [("history", "the training history"), ("log", "the training log"),
                                       ("cache", "the teacher cache's epoch_00000 shards")])
def test_a_full_disk_while_writing_logs_or_the_cache_is_one_line(seg, capsys, enospc, kind, what):
    enospc(f"{kind}:3" if kind == "log" else f"{kind}:1")
    out = seg["root"] / f"full_{kind}"
    cache = seg["root"] / f"cache_full_{kind}"
    assert cached_distill(seg, out, cache) == 2
    assert_one_line(capsys.readouterr().err, f"No space left on the device while writing {what}")
    if kind == "cache":
        assert not [n for n in os.listdir(cache) if n.startswith("epoch_")]


def test_a_full_disk_while_exporting_removes_the_partial_export(seg, capsys, enospc):
    enospc("export:1")
    out = seg["root"] / "export_full"
    assert run_tool("export", "--config", seg["teacher"], "--model_path", seg["unbroken"] / "iter_6", "--device",
                    "cpu", "--save_dir", out) == 2
    assert_one_line(capsys.readouterr().err, "No space left on the device while writing the exported inference model",
                    "The partial export was removed")
    assert not [n for n in os.listdir(out) if n.startswith("model.")]


def test_a_real_full_filesystem_ends_in_one_line(seg, tmp_path, capsys, monkeypatch):
    """A tmpfs with room for one checkpoint: the second save fails mid-write (the free-space check is told the
    disk is large, so the real ENOSPC is what stops it)."""
    mount = tmp_path / "small"
    os.makedirs(mount)
    size = sum(os.path.getsize(p) for p in (seg["unbroken"] / "iter_2").iterdir())
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size * 1.5)}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        monkeypatch.setenv("SLIM_TEST_FREE_BYTES", str(1 << 40))
        out = mount / "run"
        assert train(seg, out) == 2
        assert_one_line(capsys.readouterr().err, "No space left on the device while writing the checkpoint iter_4 (",
                        "earlier checkpoints in")
        assert sorted(n for n in os.listdir(out) if "iter_" in n) == ["iter_2"]
        assert read_checkpoint(str(out / "iter_2"))["state"]["iter"] == 2
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
