"""The denoising groups' in-group assignments: one solve per (sample, group) on the Hungarian workers,
each the optimal assignment of its own costs; non-finite costs still get an assignment."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sparse4d.model import denoising
from sparse4d.model.matching import UNASSIGNED, box_l1_cost, finite_costs, solve_assignments


class RecordingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submitted = 0

    def submit(self, fn, *args, **kwargs) -> Future:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_each_sample_and_group_is_its_own_optimal_solve(monkeypatch) -> None:
    g = torch.Generator().manual_seed(5)
    counts = [5, 2, 0]
    gt = [torch.randn(n, 11, generator=g) * 3 for n in counts]
    labels = [torch.randint(0, 3, (n,), generator=g) for n in counts]
    ids = [torch.arange(n) + 10 * i for i, n in enumerate(counts)]
    weights = torch.ones(11)
    pool = RecordingPool()
    monkeypatch.setattr(denoising, "solver_pool", lambda: pool)
    pending = denoising.start_denoising_queries(gt, labels, ids, num_groups=3, noise_scale=[1.0] * 11, max_dn_gt=8, add_neg_dn=True,
                                                reg_weights=weights, generator=g)
    assert pending is not None and pool.submitted == 3 * 3  # samples x groups, not one task for all
    dn = pending.finish()
    b, groups, m = 3, 3, 2 * max(counts)
    padded = torch.nn.utils.rnn.pad_sequence(gt, batch_first=True)
    cost = box_l1_cost(pending.noisy.flatten(0, 1), padded.repeat_interleave(groups, dim=0), weights).numpy()
    targets = dn.box_targets.reshape(b, groups, m, 11)
    for i, n in enumerate(counts):
        rows = np.concatenate([np.arange(n), max(counts) + np.arange(n)])  # positive and negative copies of real GT
        for k in range(groups):
            expected = np.full(m, UNASSIGNED)
            if n:
                picked, cols = linear_sum_assignment(cost[i * groups + k][np.ix_(rows, np.arange(n))])
                expected[rows[picked]] = cols
            for slot in range(m):
                want = padded[i, expected[slot]] if expected[slot] >= 0 else torch.zeros(11)
                torch.testing.assert_close(targets[i, k, slot], want, msg=f"sample {i} group {k} slot {slot}")
    pool.shutdown()


def test_non_finite_costs_still_get_an_assignment() -> None:
    cost = np.array([[[1.0, np.nan], [np.inf, 2.0], [-np.inf, 5.0]]], dtype=np.float32)
    block = finite_costs(cost[0])
    assert block.dtype == np.float64 and np.isfinite(block).all()
    assert block[0, 1] == 1e8 and block[1, 0] == 1e8 and block[2, 0] == -1e8
    assigned = solve_assignments(cost, [2])
    assert sorted(assigned[0][assigned[0] >= 0].tolist()) == [0, 1]
    assert assigned[0, 2] == 0  # -inf is the cheapest
    clean = np.array([[0.5, 1.5]], dtype=np.float32)
    assert finite_costs(clean).dtype == np.float64 and np.array_equal(finite_costs(clean), clean.astype(np.float64))


def test_one_task_schedule_gives_the_same_queries(monkeypatch) -> None:
    """SOLVE_GROUPS_IN_PARALLEL = False (the A/B's old schedule): one task, the same assignments."""
    def queries(parallel: bool):
        monkeypatch.setattr(denoising, "SOLVE_GROUPS_IN_PARALLEL", parallel)
        pool = RecordingPool()
        monkeypatch.setattr(denoising, "solver_pool", lambda: pool)
        g = torch.Generator().manual_seed(11)
        gt = [torch.randn(n, 11, generator=g) * 3 for n in (4, 3)]
        labels = [torch.randint(0, 3, (len(x),), generator=g) for x in gt]
        ids = [torch.arange(len(x)) for x in gt]
        dn = denoising.make_denoising_queries(gt, labels, ids, num_groups=2, noise_scale=[1.0] * 11, max_dn_gt=8, add_neg_dn=True,
                                              reg_weights=torch.ones(11), generator=g)
        pool.shutdown()
        return pool.submitted, dn

    (serial_tasks, serial), (parallel_tasks, parallel) = queries(False), queries(True)
    assert (serial_tasks, parallel_tasks) == (1, 4)
    for name in ("anchors", "box_targets", "cls_targets", "valid", "instance_ids"):
        assert torch.equal(getattr(serial, name), getattr(parallel, name)), name
