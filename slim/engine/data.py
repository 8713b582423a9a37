"""Data loading that is reproducible and resumable, on one process or several.

Every sample is drawn as `dataset[(epoch, index)]` and its random augmentation is seeded from
(seed, epoch, index): the same batch holds the same augmented samples whatever the number of workers,
and a run resumed in the middle of an epoch sees exactly what an unbroken run would have seen. A collate
function that draws random numbers for the whole batch (Mixup, CutMix: `draws_per_batch = True`) gets numpy's
and Python's generators seeded from (seed, the batch's (epoch, index) keys) just before it runs.

A sample that fails to load (a file that does not decode, a transform that raises, a batch that does not
stack) is one ConfigError naming the sample's files, raised in the main thread by `BatchStream`: paddle's
DataLoader thread would otherwise print a traceback and leave the run waiting forever for the batch.
"""
import math
import os
import random
import signal
import zlib

import numpy as np
import paddle
from paddle.io.dataloader.collate import default_collate_fn

from slim.distill.errors import ConfigError, SlimError

MAX_FILES_SHOWN = 6  # files named in an error about one batch


def sample_files(dataset, index):
    """The files behind sample `index`, for messages: the dataset's own `sample_files(index)`, PaddleSeg's
    `file_list[index]` (image, label) or a classification dataset's `samples[index]` (path, label)."""
    try:
        if hasattr(dataset, "sample_files"):
            files = dataset.sample_files(index)
        elif hasattr(dataset, "file_list"):
            files = dataset.file_list[index]
        elif hasattr(dataset, "samples"):
            files = dataset.samples[index][:1]
        else:
            return []
    except Exception:  # only for a message: never hide the original error behind another one
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [str(f) for f in files if isinstance(f, (str, os.PathLike))]


def _named(dataset, indices):
    files = [f for i in indices for f in sample_files(dataset, i)]
    if not files:
        return ""
    more = f" and {len(files) - MAX_FILES_SHOWN} more" if len(files) > MAX_FILES_SHOWN else ""
    return f" ({', '.join(files[:MAX_FILES_SHOWN])}{more})"


def sample_error(dataset, index, exc):
    """A ConfigError for an exception raised while loading sample `index`: a SlimError already says what to
    change; any other names the sample's files and the exception."""
    if isinstance(exc, SlimError):
        return exc if isinstance(exc, ConfigError) else ConfigError(str(exc))
    return ConfigError(f"Could not load sample {index}{_named(dataset, [index])}: {type(exc).__name__}: {exc}. "
                       f"Check or replace these files, or remove the sample from the dataset's file list.")


def batch_error(dataset, indices, exc):
    """A ConfigError for an exception raised while collating the samples `indices` into one batch."""
    if isinstance(exc, SlimError):
        return exc if isinstance(exc, ConfigError) else ConfigError(str(exc))
    hint = (" Samples in one batch must have the same size after the transforms: add a crop or resize "
            "transform, or check that each label has its image's size." if "shape" in str(exc) else "")
    return ConfigError(f"Could not put samples {list(indices)}{_named(dataset, indices)} into one batch: "
                       f"{type(exc).__name__}: {exc}.{hint}")


class SeededDataset(paddle.io.Dataset):
    """Wraps a map-style dataset; `dataset[(epoch, i)]` seeds numpy/random, then returns `base[i]`."""

    def __init__(self, base, seed=0):
        self.base = base
        self.seed = int(seed or 0)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        sample_seed = (self.seed * 1_000_003 + epoch * 100_003 + index) % (2 ** 32)
        np.random.seed(sample_seed)
        random.seed(sample_seed)
        try:
            return self.base[index]
        except Exception as e:
            raise sample_error(self.base, index, e) from None


ERROR_KEY = "__slim_data_error__"


class _Failed:
    """A sample (or batch) that could not be loaded, carried to the main thread instead of raised."""

    def __init__(self, message):
        self.message = message


class _LoaderDataset(paddle.io.Dataset):
    """What the DataLoader reads: ((epoch, index), sample), or (key, _Failed) instead of raising in its thread."""

    def __init__(self, seeded):
        self.seeded = seeded

    def __len__(self):
        return len(self.seeded)

    def __getitem__(self, key):
        key = tuple(key) if isinstance(key, tuple) else (0, key)
        try:
            return key, self.seeded[key]
        except Exception as e:
            return key, _Failed(str(sample_error(self.seeded.base, key[1], e)))


def batch_seed(seed, keys):
    """The seed of a batch's own draws: from the data seed and its samples' (epoch, index) keys."""
    text = f"{int(seed or 0)}:" + ",".join(f"{int(e)}.{int(i)}" for e, i in keys)
    return zlib.crc32(text.encode())


def _worker_leaves_stopping_to_the_trainer(worker_id):
    """Data-loading workers ignore SIGTERM. A SIGTERM sent to the whole process group (a scheduler, `kill --
    -PGID`) would otherwise end them at once (Paddle's workers install their own handler) and fail the training
    process before it saves its stop checkpoint. They still end with the loader, or when the training process
    is gone (Paddle's workers watch their parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _LoaderCollate:
    """The task's collate on the samples; a failed sample or collate becomes a batch that carries the
    message (with a placeholder array: paddle's loader queue needs at least one tensor)."""

    def __init__(self, collate_fn, base, seed=0):
        self.collate_fn = collate_fn or default_collate_fn
        self.base, self.seed = base, seed
        self.draws_per_batch = bool(getattr(collate_fn, "draws_per_batch", False))

    @staticmethod
    def failed(message):
        return {ERROR_KEY: message, "placeholder": np.zeros(1, dtype=np.float32)}

    def __call__(self, items):
        for _, sample in items:
            if isinstance(sample, _Failed):
                return self.failed(sample.message)
        if self.draws_per_batch:
            value = batch_seed(self.seed, [key for key, _ in items])
            np.random.seed(value)
            random.seed(value)
        try:
            return self.collate_fn([sample for _, sample in items])
        except Exception as e:
            return self.failed(str(batch_error(self.base, [key[1] for key, _ in items], e)))


class ResumableBatchSampler(paddle.io.BatchSampler):
    """Shuffles with a per-epoch seed, splits batches across ranks, and can start mid-epoch.

    Yields lists of (epoch, index) keys for `SeededDataset`.
    """

    def __init__(self, num_samples, batch_size, shuffle=True, drop_last=True, rank=0, world_size=1, seed=0):
        if num_samples == 0:
            raise ConfigError("The training dataset is empty: check its file list and dataset_root.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world_size, self.seed = rank, world_size, int(seed or 0)
        self.epoch, self.start_batch = 0, 0
        total_batch = batch_size * world_size
        if drop_last and num_samples < total_batch:
            raise ConfigError(
                f"The training dataset has {num_samples} samples, fewer than one batch of "
                f"{batch_size} x {world_size} process(es); lower batch_size or add data.")

    def set_epoch(self, epoch, start_batch=0):
        self.epoch, self.start_batch = epoch, start_batch

    def _order(self):
        indices = np.arange(self.num_samples)
        if self.shuffle:
            np.random.RandomState((self.seed * 7919 + self.epoch) % (2 ** 32)).shuffle(indices)
        return indices

    def __len__(self):
        total = self.batch_size * self.world_size
        return self.num_samples // total if self.drop_last else math.ceil(self.num_samples / total)

    def __iter__(self):
        indices = self._order()
        total = self.batch_size * self.world_size
        for b in range(self.start_batch, len(self)):
            chunk = indices[b * total:(b + 1) * total]
            if len(chunk) < total and not self.drop_last:
                # drop_last False: the last batch is filled up from the start of the epoch's order, so that
                # every sample is seen and every batch is full (BatchNorm, a teacher cache's batch layout)
                chunk = np.concatenate([chunk, np.resize(indices, total - len(chunk))])
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in mine]


class BatchStream:
    """An endless iterator of batches over epochs, resumable at any iteration. `last_keys`: the
    (epoch, index) of each sample of the batch last returned. `cache_keys` names that batch's rows in a
    teacher-output cache: its `last_keys`, or, when the collate mixes each batch (Mixup: what a sample is depends
    on its batch, and a sample refilling the last batch of an epoch is mixed with other partners there), each
    row's (epoch, place in the epoch's batches over every process); `cache_rows` rows make an epoch."""

    def __init__(self, dataset, batch_size, collate_fn=None, num_workers=0, seed=0, rank=0, world_size=1,
                 shuffle=True, drop_last=True):
        self.dataset = SeededDataset(dataset, seed)
        self.sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle, drop_last, rank, world_size, seed)
        self.collate_fn, self.num_workers = collate_fn, num_workers
        self._iter = None
        self.epoch = 0
        self._keys, self._position, self._start_batch = [], 0, 0
        self.last_keys = []
        self.mixes_batches = bool(getattr(collate_fn, "draws_per_batch", False))

    @property
    def iters_per_epoch(self):
        return len(self.sampler)

    def start_at(self, iteration):
        """Position the stream so that the next batch is the one of global iteration `iteration`."""
        self.epoch, start_batch = divmod(iteration, self.iters_per_epoch)
        self._open(start_batch)

    @property
    def cache_rows(self):
        """Rows of an epoch in a teacher-output cache: its samples, or its places when batches are mixed."""
        if self.mixes_batches:
            return len(self.sampler) * self.sampler.batch_size * self.sampler.world_size
        return len(self.dataset)

    @property
    def cache_keys(self):
        """The cache keys of the batch last returned (see the class docstring)."""
        if not self.mixes_batches:
            return self.last_keys
        batch = self._start_batch + self._position - 1  # the epoch's batch last returned
        first = (batch * self.sampler.world_size + self.sampler.rank) * self.sampler.batch_size
        return [(self.epoch, first + j) for j in range(len(self.last_keys))]

    def _open(self, start_batch=0):
        self._start_batch = start_batch
        self.sampler.set_epoch(self.epoch, start_batch)
        self._keys, self._position = list(iter(self.sampler)), 0  # what the loader yields, in its order
        loader = paddle.io.DataLoader(_LoaderDataset(self.dataset), batch_sampler=self.sampler,
                                      collate_fn=_LoaderCollate(self.collate_fn, self.dataset.base, self.dataset.seed),
                                      num_workers=self.num_workers, return_list=True,
                                      # shared memory: Paddle's worker pickles a batch's tensors in a queue thread
                                      # and segfaulted in about 1 of 4 runs here (paddle 3.3, reductions.py)
                                      use_shared_memory=False,
                                      worker_init_fn=_worker_leaves_stopping_to_the_trainer if self.num_workers else None)
        self._iter = iter(loader)

    def close(self, timeout=10.0):
        """End the loader's worker processes now. Left to garbage collection, a run stopped by an exception
        keeps them (its traceback holds the loader) until interpreter exit, where multiprocessing's SIGTERM,
        which they ignore, would not end them."""
        it, self._iter = self._iter, None
        workers = getattr(it, "_workers", None)
        if not workers:  # no worker processes (--num_workers 0)
            return
        it._try_shutdown_all(timeout)
        for worker in workers:
            if worker.is_alive():  # stuck in a sample: nothing of it is needed any more
                worker.kill()
                worker.join(1.0)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            self._open()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._open()
            batch = next(self._iter)
        if isinstance(batch, dict) and ERROR_KEY in batch:
            self._iter = None  # the loader is dropped: its thread stops instead of reading on
            raise ConfigError(batch[ERROR_KEY])
        self.last_keys = self._keys[self._position]
        self._position += 1
        return batch
