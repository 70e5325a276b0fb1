"""The denoising groups' in-group assignments: one solve per (sample, group) on the Hungarian workers,
each the optimal assignment of its own costs, computed from host GT on the worker; non-finite costs
still get an assignment."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from sparse4d.model import denoising, matching
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


def test_costs_from_host_arrays_equal_the_device_formula() -> None:
    """The workers' numpy costs (host GT) are `box_l1_cost`, the formula the GPU path computes."""
    g = torch.Generator().manual_seed(11)
    noisy = torch.randn(2, 3, 6, 11, generator=g) * 4  # (B, G, M, D)
    gt = torch.randn(2, 5, 11, generator=g) * 4
    weights = torch.rand(11, generator=g)
    weights[[2, 6, 7]] = 0.0  # dimensions left out, as the default weights leave yaw and velocity out
    weights[9] = -0.5  # nonsense as a matching weight, but the formula is the formula
    expected = box_l1_cost(noisy.flatten(0, 1), gt.repeat_interleave(3, dim=0), weights).numpy()
    for on_host in (True, False):
        costs = denoising.group_costs(noisy, gt, weights, on_host=on_host)
        for p in range(6):
            np.testing.assert_allclose(costs(p), expected[p], rtol=1e-6, atol=1e-5, err_msg=f"on_host={on_host} problem {p}")


def test_host_gt_gives_queries_on_the_requested_device(monkeypatch) -> None:
    """GT on the host, queries for another device: every query tensor lands there (meta stands in for
    a GPU: the copy path is the same), and the host-side solve does not touch the device."""
    g = torch.Generator().manual_seed(3)
    gt = [torch.randn(n, 11, generator=g) for n in (4, 2)]
    labels = [torch.randint(0, 3, (len(x),), generator=g) for x in gt]
    ids = [torch.arange(len(x)) for x in gt]
    copies = []
    def recording(array, device):
        copies.append(device)
        return torch.from_numpy(array).to(device)

    monkeypatch.setattr(denoising, "to_device", recording)
    monkeypatch.setattr(matching, "to_device", recording)  # behind `moved`
    pending = denoising.start_denoising_queries(gt, labels, ids, num_groups=2, noise_scale=[1.0] * 11, max_dn_gt=8, add_neg_dn=True,
                                                reg_weights=torch.ones(11), device="meta", generator=g)
    assert pending is not None
    dn = pending.finish()
    for name in ("anchors", "box_targets", "cls_targets", "valid", "instance_ids"):
        assert getattr(dn, name).device.type == "meta", name
    assert {d.type for d in copies} == {"cpu", "meta"}  # host arrays stay host; only the results move
