"""Hungarian matching of queries to ground truth.

Cost = focal classification cost x cls_weight + weighted L1 box cost x box_weight, as Sparse4D's
SparseBox3DTarget defines it; the assignment is scipy's linear_sum_assignment, which needs the costs
on the host. `LayerMatcher` starts each decoder layer's copy as soon as that layer's outputs exist
(`HostCopy`: pinned memory, non-blocking, an event) and hands its solve to a thread pool right away:
the worker waits for the copy and solves while the main thread keeps queuing GPU work (both the wait
and scipy's solver release the GIL). Solved one after the other on the main thread, the 12 problems
of a default batch-2 step (900 queries x 128 GT) left the GPU idle for about 25 ms per step.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

UNASSIGNED = -1


def focal_class_cost(logits: Tensor, gt_labels: Tensor, alpha: float, gamma: float, eps: float = 1e-12) -> Tensor:
    """(..., Q, C) logits, (..., M) labels -> (..., Q, M): focal loss of calling the query class k minus not calling it."""
    prob = logits.sigmoid()
    neg = -(1 - prob + eps).log() * (1 - alpha) * prob.pow(gamma)
    pos = -(prob + eps).log() * alpha * (1 - prob).pow(gamma)
    per_class = pos - neg
    if logits.dim() == 2:
        return per_class[:, gt_labels]
    index = gt_labels.unsqueeze(-2).expand(*per_class.shape[:-1], gt_labels.shape[-1])
    return torch.gather(per_class, -1, index)


def box_l1_cost(boxes: Tensor, gt_boxes: Tensor, reg_weights: Tensor) -> Tensor:
    """(..., Q, D), (..., M, D), (D,) -> (..., Q, M) weighted L1 distance (NaN targets count as 0 difference)."""
    diff = (boxes.unsqueeze(-2) - gt_boxes.unsqueeze(-3)).abs()
    diff = torch.nan_to_num(diff, nan=0.0)
    return (diff * reg_weights).sum(-1)


def matching_cost(
    logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *, alpha: float, gamma: float, cls_weight: float, box_weight: float, reg_weights: Tensor
) -> Tensor:
    return focal_class_cost(logits, gt_labels, alpha, gamma) * cls_weight + box_l1_cost(boxes, gt_boxes, reg_weights) * box_weight


def solve_assignments(cost: Tensor | np.ndarray, num_gt: list[int], rows: list[np.ndarray] | None = None) -> np.ndarray:
    """Minimum-cost assignment per problem. cost (S, Q, M) on any device; problem s uses the rows
    `rows[s]` (default all) and the first num_gt[s] columns.

    Returns (S, Q) int64 numpy: the column assigned to each row, UNASSIGNED where none. Non-finite
    costs are treated as very expensive, so a diverging model still gets an assignment.
    """
    s_count, q = cost.shape[:2]
    assigned = np.full((s_count, q), UNASSIGNED, dtype=np.int64)
    if s_count == 0 or q == 0 or max(num_gt, default=0) == 0:
        return assigned
    if isinstance(cost, Tensor):
        cost = cost.detach().float().cpu().numpy()
    for s in range(s_count):
        m = num_gt[s]
        used = np.arange(q) if rows is None else rows[s]
        if m == 0 or len(used) == 0:
            continue
        picked, cols = linear_sum_assignment(finite_costs(cost[s, used, :m]))
        assigned[s, used[picked]] = cols
    return assigned


def finite_costs(block: np.ndarray) -> np.ndarray:
    """One problem's costs as float64 (what the solver computes in), NaN and +inf as 1e8 and -inf as
    -1e8. Only the problem's own rows and columns are converted, and the replacement runs only when
    something is not finite (a diverging model): the common case is one conversion."""
    block = np.asarray(block, dtype=np.float64)
    if not np.isfinite(block).all():
        block = np.nan_to_num(block, nan=1e8, posinf=1e8, neginf=-1e8)
    return block


def to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """Host array -> device tensor without a host sync (pinned, non-blocking copy on CUDA)."""
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def moved(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; from the host without a host sync (pinned, non-blocking copy on CUDA)."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu":
        return to_device(tensor.numpy(), device)
    return tensor.to(device)


class HostCopy:
    """A device tensor's copy to the host, started now and waited for only when read.

    On CUDA the copy goes to pinned memory without blocking and an event marks its end: reading waits
    for this copy alone, not for everything queued after it. On the CPU it is a plain copy.
    """

    def __init__(self, tensor: Tensor) -> None:
        tensor = tensor.detach()
        self._event: torch.cuda.Event | None = None
        if tensor.is_cuda:
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = tensor.clone()

    def numpy(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        return self._host.numpy()


_solver_pool: ThreadPoolExecutor | None = None


def solver_pool() -> ThreadPoolExecutor:
    """The process's Hungarian workers (created on first use, so forked data workers never own one)."""
    global _solver_pool
    if _solver_pool is None:
        _solver_pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="hungarian")
    return _solver_pool


def _solve_sample(copy: HostCopy, sample: int, num_gt: int) -> np.ndarray:
    return solve_assignments(copy.numpy()[sample : sample + 1], [num_gt])[0]


# one layer's (logits (B, Q, C), boxes (B, Q, D)) -> float32 costs (B, Q, M) against the padded GT
LayerCost = Callable[[Tensor, Tensor], Tensor]


class LayerMatcher:
    """Hungarian matching of several decoder layers' queries to the same GT, started layer by layer.

    `cost` gives one layer's costs against the GT (padded to M columns); num_gt[b] real GT of sample b
    (host ints). `add_layer` queues one layer's costs and their copy to the host, and one solve per
    sample on the worker pool; `assignments` collects them. The model passes its `matching_costs`,
    which training compiles into one fused kernel per layer (`compile_regions`).
    """

    def __init__(self, cost: LayerCost, num_gt: list[int]) -> None:
        self.cost = cost
        self.num_gt = list(num_gt)
        self._pending: list[list[Future[np.ndarray]] | None] = []
        self._shape: tuple[int, int] | None = None
        self._device: torch.device | None = None

    @property
    def num_layers(self) -> int:
        return len(self._pending)

    @torch.no_grad()
    def add_layer(self, logits: Tensor, boxes: Tensor) -> None:
        """logits (B, Q, C), boxes (B, Q, D) of one layer's queries to match."""
        self._shape, self._device = tuple(logits.shape[:2]), logits.device
        if max(self.num_gt, default=0) == 0 or logits.shape[1] == 0:
            self._pending.append(None)
            return
        copy = HostCopy(self.cost(logits.detach(), boxes.detach()))
        pool = solver_pool()
        self._pending.append([pool.submit(_solve_sample, copy, s, m) for s, m in enumerate(self.num_gt)])

    def assignments(self) -> Tensor:
        """(L, B, Q) int64 on the layers' device: the GT index each query is assigned to, or UNASSIGNED."""
        if self._shape is None or self._device is None:
            raise ValueError("LayerMatcher.assignments() before any add_layer()")
        solved = [
            np.full(self._shape, UNASSIGNED, dtype=np.int64) if samples is None else np.stack([f.result() for f in samples])
            for samples in self._pending
        ]
        return to_device(np.stack(solved), self._device)


@torch.no_grad()
def hungarian_match_batch(
    logits: Tensor,
    boxes: Tensor,
    gt_labels: Tensor,
    gt_boxes: Tensor,
    num_gt: list[int],
    *,
    alpha: float,
    gamma: float,
    cls_weight: float,
    box_weight: float,
    reg_weights: Tensor,
) -> Tensor:
    """logits (S, Q, C), boxes (S, Q, D); GT padded to M per problem: gt_labels (S, M) (padding any
    valid class), gt_boxes (S, M, D) NaN-free; num_gt[s] real GT of problem s (host ints).

    Returns (S, Q) int64 on logits.device: the GT index each query is assigned to, or UNASSIGNED.
    """
    def cost(layer_logits: Tensor, layer_boxes: Tensor) -> Tensor:
        return matching_cost(layer_logits.float(), layer_boxes.float(), gt_labels, gt_boxes.float(), alpha=alpha, gamma=gamma,
                             cls_weight=cls_weight, box_weight=box_weight, reg_weights=reg_weights.float())

    matcher = LayerMatcher(cost, num_gt)
    matcher.add_layer(logits, boxes)
    return matcher.assignments()[0]


@torch.no_grad()
def hungarian_match(
    logits: Tensor, boxes: Tensor, gt_labels: Tensor, gt_boxes: Tensor, *, alpha: float, gamma: float, cls_weight: float, box_weight: float, reg_weights: Tensor
) -> tuple[Tensor, Tensor]:
    """One problem: (Q, C), (Q, D), (M,), (M, D) -> (query indices, gt indices), int64 on logits.device."""
    assigned = hungarian_match_batch(
        logits[None], boxes[None], gt_labels[None], gt_boxes[None], [int(gt_labels.shape[0])],
        alpha=alpha, gamma=gamma, cls_weight=cls_weight, box_weight=box_weight, reg_weights=reg_weights,
    )[0]
    rows = torch.nonzero(assigned >= 0).flatten()
    return rows, assigned[rows]
