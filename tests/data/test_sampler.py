"""Sequences, first-frame flags, same-scene batches and disjoint DDP ranks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from sparse4d.data.dataset import SequenceSpan, cut_sequences
from sparse4d.data.sampler import StreamingBatchSampler, process_group_rank
from sparse4d.errors import DataError


def _infos(scene_lengths: dict[str, int]) -> list[dict]:
    return [{"scene": scene, "sequence_id": f"{scene}+0", "frame_index": frame}
            for scene, length in scene_lengths.items() for frame in range(length)]


def _spans() -> list[SequenceSpan]:
    return cut_sequences(_infos({"A": 23, "B": 17, "C": 9}), 5)


def test_sequences_need_no_exact_split() -> None:
    spans = _spans()
    assert [len(span) for span in spans if span.scene == "A"] == [5, 5, 5, 4, 4]
    assert [len(span) for span in spans if span.scene == "C"] == [5, 4]
    assert spans[0].start == 0 and spans[-1].stop == 49
    assert all(a.stop == b.start for a, b in zip(spans, spans[1:]))
    assert [len(span) for span in cut_sequences(_infos({"A": 7}), None)] == [7]


def _run(sampler: StreamingBatchSampler) -> list[list]:
    return [batch for batch in sampler]


def test_slots_stream_sequences_with_explicit_first_frames() -> None:
    spans = _spans()
    sampler = StreamingBatchSampler(spans, 2, shuffle=True, seed=1, world_size=1, rank=0)
    batches = _run(sampler)
    assert len(batches) == len(sampler)
    seen = set()
    for slot in range(2):
        previous = None
        for batch in batches:
            key = batch[slot]
            span = next(span for span in spans if span.start <= key.index < span.stop)
            assert key.first_frame == (key.index == span.start)
            if previous is not None and not key.first_frame:
                assert key.index == previous.index + 1 and key.aug_seed == previous.aug_seed
            previous = key
            seen.add(key.index)
    assert seen == set(range(49))  # every frame at least once
    for batch in batches:  # same_scene_in_batch
        assert len({next(s.scene for s in spans if s.start <= key.index < s.stop) for key in batch}) == 1


def test_ranks_get_disjoint_data_and_equal_lengths() -> None:
    spans = _spans()
    per_rank = []
    for rank in range(3):
        sampler = StreamingBatchSampler(spans, 2, seed=4, world_size=3, rank=rank)
        sampler.set_epoch(2)
        batches = _run(sampler)
        per_rank.append({key.index for batch in batches for key in batch})
        assert len(batches) == len(sampler)
    assert len({len(StreamingBatchSampler(spans, 2, seed=4, world_size=3, rank=r)) for r in range(3)}) == 1
    for a in range(3):
        for b in range(a + 1, 3):
            assert not per_rank[a] & per_rank[b]
    assert set().union(*per_rank) == set(range(49))


def test_epochs_reshuffle_and_too_many_ranks_fail() -> None:
    spans = _spans()
    sampler = StreamingBatchSampler(spans, 2, seed=0, world_size=1, rank=0)
    first = [key.index for key in next(iter(sampler))]
    orders = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        orders.add(tuple(key.index for key in next(iter(sampler))))
    assert len(orders) > 1 and tuple(first) in orders
    with pytest.raises(DataError, match="cannot feed 8 ranks"):
        len(StreamingBatchSampler(spans, 2, world_size=8, rank=0))


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sampler = StreamingBatchSampler(_spans(), 2, seed=7)
        indices = sorted({key.index for batch in sampler for key in batch})
        Path(out_dir, f"{rank}.txt").write_text(f"{sampler.world_size} {sampler.rank} {len(sampler)}\n"
                                                + " ".join(map(str, indices)))
    finally:
        dist.destroy_process_group()


def test_world_size_comes_from_the_real_process_group(tmp_path: Path) -> None:
    assert process_group_rank() == (1, 0)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    results = [(tmp_path / f"{rank}.txt").read_text().split("\n") for rank in range(2)]
    headers = [line[0].split() for line in results]
    assert headers[0][:2] == ["2", "0"] and headers[1][:2] == ["2", "1"] and headers[0][2] == headers[1][2]
    indices = [set(map(int, line[1].split())) for line in results]
    assert not indices[0] & indices[1] and indices[0] | indices[1] == set(range(49))
