"""Data loading that is reproducible and resumable, on one process or several.

Every sample is drawn as `dataset[(epoch, index)]` and its random augmentation is seeded from
(seed, epoch, index): the same batch holds the same augmented samples whatever the number of workers,
and a run resumed in the middle of an epoch sees exactly what an unbroken run would have seen.
"""
import math
import random

import numpy as np
import paddle

from slim.distill.errors import ConfigError


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
        return self.base[index]


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
                chunk = np.concatenate([chunk, indices[:total - len(chunk)]])  # pad like paddle's sampler
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            yield [(self.epoch, int(i)) for i in mine]


class BatchStream:
    """An endless iterator of batches over epochs, resumable at any iteration."""

    def __init__(self, dataset, batch_size, collate_fn=None, num_workers=0, seed=0, rank=0, world_size=1,
                 shuffle=True, drop_last=True):
        self.dataset = SeededDataset(dataset, seed)
        self.sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle, drop_last, rank, world_size, seed)
        self.collate_fn, self.num_workers = collate_fn, num_workers
        self._iter = None
        self.epoch = 0

    @property
    def iters_per_epoch(self):
        return len(self.sampler)

    def start_at(self, iteration):
        """Position the stream so that the next batch is the one of global iteration `iteration`."""
        self.epoch, start_batch = divmod(iteration, self.iters_per_epoch)
        self._open(start_batch)

    def _open(self, start_batch=0):
        self.sampler.set_epoch(self.epoch, start_batch)
        loader = paddle.io.DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self.collate_fn,
                                      num_workers=self.num_workers, return_list=True)
        self._iter = iter(loader)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iter is None:
            self._open()
        try:
            return next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._open()
            return next(self._iter)
