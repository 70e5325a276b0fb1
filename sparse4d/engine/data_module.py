"""Datasets and streaming loaders for train / validation / test, built from the `dataset:` section.

Training streams sequences (see sparse4d/data/sampler.py) so the instance bank carries over batches.
Evaluation walks each camera group's frames exactly once and in time order: whole scene groups are
one sequence each, and a frame the sampler repeats to fill a batch slot is predicted again but
dropped when results are collected (first prediction of a sample token wins).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from sparse4d.batch import TARGET_KEYS, check_targets
from sparse4d.data.collate import collate_sparse4d
from sparse4d.data.dataset import OVPKLDataset, SampleKey
from sparse4d.data.depth_targets import first_level_stride
from sparse4d.data.sampler import StreamingBatchSampler
from sparse4d.engine.runloop import move_batch

LOG = logging.getLogger(__name__)


def _chosen(section: Any, name: str, fallback: Any) -> Any:
    """A split-level key wins only when the spec set it (TAO writes both copies of some keys)."""
    return getattr(section, name) if name in section.model_fields_set else fallback


def input_hw(model_cfg: Any) -> tuple[int, int]:
    width, height = (int(v) for v in model_cfg.input_shape)
    return height, width


def build_dataset(dataset_cfg: Any, model_cfg: Any, split: str, *, seed: int = 0, ann_file: str | None = None) -> OVPKLDataset:
    """`split` is train, val or test. Depth targets are read only for training with a depth loss, and
    pooled to the first FPN level's stride (the depth branch's finest level; the same loss, fewer bytes)."""
    common = dict(data_root=dataset_cfg.data_root, classes=list(dataset_cfg.classes), augmentation=dataset_cfg.augmentation,
                  normalize=dataset_cfg.normalize, input_hw=input_hw(model_cfg), seed=seed)
    if split == "train":
        section = dataset_cfg.train_dataset
        sequences = dataset_cfg.sequences
        split_num = _chosen(section, "sequences_split_num", sequences.split_num) if section.with_seq_flag else None
        return OVPKLDataset(
            ann_file or section.ann_file, test_mode=section.test_mode, use_valid_flag=section.use_valid_flag,
            with_depth=bool(dataset_cfg.use_h5_file_for_depth and model_cfg.depth_branch.loss_weight > 0),
            depth_stride=first_level_stride(model_cfg.neck.start_level),
            sequences_split_num=split_num,
            keep_consistent_aug=_chosen(section, "keep_consistent_seq_aug", sequences.keep_consistent_aug), **common)
    section = dataset_cfg.val_dataset if split == "val" else dataset_cfg.test_dataset
    return OVPKLDataset(ann_file or section.ann_file, test_mode=True, use_valid_flag=section.use_valid_flag, with_depth=False,
                        sequences_split_num=None, **common)


class EpochOffsetSampler:
    """Streaming batch sampler whose epoch follows the trainer (plus the epochs done before a resume).

    After a mid-epoch resume the first epoch skips the batches already trained; the first batch it
    yields is flagged as a first frame in every slot, since the carried instances were not saved.
    """

    def __init__(self, inner: StreamingBatchSampler, epoch_of: Any, skip_first: int = 0) -> None:
        self.inner = inner
        self.epoch_of = epoch_of  # callable -> absolute epoch index (0-based)
        self.skip_first = skip_first

    def __len__(self) -> int:
        return len(self.inner) - self.skip_first

    def __iter__(self) -> Iterator[list[SampleKey]]:
        self.inner.set_epoch(int(self.epoch_of()))
        skip, self.skip_first = self.skip_first, 0
        for number, batch in enumerate(self.inner):
            if number < skip:
                continue
            if number == skip and skip:
                batch = [SampleKey(key.index, True, key.aug_seed) for key in batch]
            yield batch


class Sparse4DDataModule(pl.LightningDataModule):
    def __init__(self, dataset_cfg: Any, model_cfg: Any, *, seed: int, epoch_of: Any = lambda: 0, skip_batches: int = 0,
                 with_val: bool = True, world_size: int | None = None, rank: int | None = None) -> None:
        super().__init__()
        self.dataset_cfg = dataset_cfg
        self.model_cfg = model_cfg
        self.seed = seed
        self.epoch_of = epoch_of
        self.skip_batches = skip_batches
        self.with_val = with_val
        self.world_size, self.rank = world_size, rank
        self.train_set: OVPKLDataset | None = None
        self.val_set: OVPKLDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = build_dataset(self.dataset_cfg, self.model_cfg, "train", seed=self.seed)
        if self.with_val and self.val_set is None:
            self.val_set = build_dataset(self.dataset_cfg, self.model_cfg, "val", seed=self.seed)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Check the GT labels while they are still on the host (on the GPU the check would be a sync)."""
        check_targets(batch, len(self.dataset_cfg.classes))
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Everything but the GT lists (`batch.TARGET_KEYS`): the model copies those to the device
        itself and solves the denoising assignment from the host copies, so that solve does not
        wait for the GPU to finish the previous step."""
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return move_batch(batch, device, keep=TARGET_KEYS)

    def train_sampler(self) -> EpochOffsetSampler:
        assert self.train_set is not None
        same_scene = _chosen(self.dataset_cfg.train_dataset, "same_scene_in_batch", self.dataset_cfg.sequences.same_scene_in_batch)
        inner = StreamingBatchSampler(self.train_set.sequences, int(self.dataset_cfg.batch_size), shuffle=True,
                                      same_scene_in_batch=bool(same_scene), seed=self.seed, world_size=self.world_size, rank=self.rank)
        return EpochOffsetSampler(inner, self.epoch_of, self.skip_batches)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        sampler = self.train_sampler()
        # Only the first epoch after a mid-epoch resume is short: the loaders Lightning rebuilds for
        # the next epochs must be whole, or every later epoch would skip the same batches again.
        self.skip_batches = 0
        return _loader(self.train_set, sampler, int(self.dataset_cfg.num_workers))

    def val_loader(self) -> DataLoader:
        """Not `val_dataloader`: validation runs from TrainingLifecycle, not Lightning's loop."""
        assert self.val_set is not None
        return eval_loader(self.val_set, int(self.dataset_cfg.batch_size), int(self.dataset_cfg.num_workers),
                           world_size=self.world_size, rank=self.rank)


def eval_loader(dataset: OVPKLDataset, batch_size: int, num_workers: int, *, world_size: int | None = None,
                rank: int | None = None) -> DataLoader:
    """Frames in time order, each camera group once (slots never share a scene group)."""
    batch_size = max(1, min(batch_size, len(dataset.sequences)))
    sampler = StreamingBatchSampler(dataset.sequences, batch_size, shuffle=False, same_scene_in_batch=False, seed=0,
                                    world_size=world_size, rank=rank)
    return _loader(dataset, sampler, num_workers)


def _loader(dataset: OVPKLDataset, batch_sampler: Any, num_workers: int) -> DataLoader:
    # pinned batches let the copies to the GPU run without stalling the host
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_sparse4d,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
