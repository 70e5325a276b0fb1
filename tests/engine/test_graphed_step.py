"""GraphedOptimizerStep: clip + AdamW replayed as one CUDA graph must update like the eager code."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from sparse4d.engine.graphed_step import GraphedOptimizerStep


def test_needs_a_capturable_optimizer() -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedOptimizerStep(torch.optim.AdamW(params, lr=1e-3), max_norm=1.0)


def test_on_the_cpu_every_step_is_eager_clip_adamw_and_release_with_the_schedule_in_place() -> None:
    """The trainer's semantics without CUDA graphs: the rates become tensors the schedule fills in place
    (a LambdaLR built after the wrap, and one rate replaced by a float), the clip uses the norm type."""
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    graphed = copy.deepcopy(eager)
    eager_opt = torch.optim.AdamW(eager.parameters(), lr=1e-2, weight_decay=0.1)
    graphed_opt = torch.optim.AdamW(graphed.parameters(), lr=1e-2, weight_decay=0.1, fused=True, capturable=True)
    step = GraphedOptimizerStep(graphed_opt, max_norm=0.5, norm_type=1.0)
    schedule = [1.0, 0.5, 0.25, 0.25, 0.125, 1.0]
    eager_sched = torch.optim.lr_scheduler.LambdaLR(eager_opt, lambda k: schedule[k])
    graphed_sched = torch.optim.lr_scheduler.LambdaLR(graphed_opt, lambda k: schedule[k])
    lr_tensor = step.lrs[0]
    for i in range(5):
        x = torch.randn(8, 16)
        for model in (eager, graphed):
            (model(x) ** 2).sum().backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 0.5, norm_type=1.0)
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        step.step()
        assert all(p.grad is None for p in graphed.parameters())
        eager_sched.step()
        graphed_sched.step()
        if i == 1:  # an optimizer state loaded on resume brings its own tensor
            eager_opt.param_groups[0]["lr"] = 4e-3
            graphed_opt.param_groups[0]["lr"] = torch.tensor(4e-3)
        if i == 2:  # an older scheduler writes plain numbers
            for opt in (eager_opt, graphed_opt):
                opt.param_groups[0]["lr"] = 3e-3
    assert step.eager_steps == 5 and step.graph is None
    assert graphed_opt.param_groups[0]["lr"] is lr_tensor  # the scheduler filled it in place
    assert float(lr_tensor) == pytest.approx(eager_opt.param_groups[0]["lr"])
    for a, b in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_replays_match_eager_clip_and_adamw() -> None:
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).cuda()
    sometimes = torch.nn.Linear(4, 4).cuda()  # gets a gradient only in some steps: those steps run eagerly
    graphed, graphed_sometimes = copy.deepcopy(eager), copy.deepcopy(sometimes)
    eager_params = [*eager.parameters(), *sometimes.parameters()]
    graphed_params = [*graphed.parameters(), *graphed_sometimes.parameters()]
    eager_opt = torch.optim.AdamW(eager_params, lr=1e-2, weight_decay=0.1, fused=True)
    graphed_opt = torch.optim.AdamW(graphed_params, lr=1e-2, weight_decay=0.1, fused=True, capturable=True)
    step = GraphedOptimizerStep(graphed_opt, max_norm=0.5)
    for i in range(7):
        x = torch.randn(8, 16, device="cuda")
        for model, extra in ((eager, sometimes), (graphed, graphed_sometimes)):
            y = model(x)
            if i == 4:
                y = extra(y)
            (y ** 2).sum().backward()
        torch.nn.utils.clip_grad_norm_([p for p in eager_params if p.grad is not None], 0.5)
        eager_opt.step()
        eager_opt.zero_grad(set_to_none=True)
        step.step()
        if i == 3:  # a new rate, as a number: copied into the tensor the graph reads before the next replay
            for opt in (eager_opt, graphed_opt):
                opt.param_groups[0]["lr"] = 5e-3
        assert all(p.grad is None for p in graphed_params)
    assert step.graph is not None
    assert step.eager_steps == 3  # the first, the capture, and step 4 with the extra layer's gradients
    for a, b in zip(eager_params, graphed_params):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def adamw_config() -> SimpleNamespace:
    """A `train.optim` section: AdamW, clip at 0.5 (active on TinyDetector every step), a backbone
    lr multiplier, a 4-step warmup then cosine decay."""
    return SimpleNamespace(type="adamw", lr=0.01, weight_decay=0.01, momentum=0.0,
                           grad_clip=SimpleNamespace(max_norm=0.5, norm_type="L2"),
                           paramwise_cfg=SimpleNamespace(custom_keys=SimpleNamespace(img_backbone=SimpleNamespace(lr_mult=0.1))),
                           lr_scheduler=SimpleNamespace(warmup_iters=4, warmup_ratio=0.1, min_lr_ratio=0.01))


class TinyDetector(torch.nn.Module):
    """The model interface Sparse4DLightning trains: forward(batch) -> outputs, loss(outputs, batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, batch: dict) -> dict:
        return {"y": self.net(batch["img"].flatten(1)[:, :12])}

    def loss(self, out: dict, batch: dict) -> dict:
        value = ((out["y"] - 1.0) ** 2).sum() * 50  # large gradients: the clip is active every step
        return {"loss_cls_0": value, "loss": value}


def test_the_trainer_with_the_graphed_step_trains_like_lightnings_own_step() -> None:
    """Sparse4DLightning(graphed_optimizer=True) on the CPU (every step eager): the same weights as
    Lightning's optimizer step with its gradient clipping, the warmup schedule applied through the
    rate tensors, Lightning's clipping hook never called (the graphed step clips), no gradient left."""
    import pytorch_lightning as pl

    from sparse4d.engine.lightning_module import Sparse4DLightning
    from sparse4d.engine.optim import lr_factor

    optim = adamw_config()
    torch.manual_seed(0)
    data = [{"img": torch.randn(2, 1, 3, 2, 2)} for _ in range(9)]
    initial = TinyDetector()
    results = {}
    for graphed in (False, True):
        model = TinyDetector()
        model.load_state_dict(initial.state_dict())
        module = Sparse4DLightning(model, optim, total_steps=9, finite_check_interval=3, graphed_optimizer=graphed)
        clip_calls = []
        original_clip = module.configure_gradient_clipping
        module.configure_gradient_clipping = lambda *a, **k: (clip_calls.append(1), original_clip(*a, **k))[1]
        trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
        assert trainer.global_step == 9
        if graphed:  # released after every step (Lightning's own step zeroes them only before the next backward)
            assert all(p.grad is None for p in model.parameters())
        results[graphed] = (model, module, len(clip_calls), trainer.optimizers[0])
    (eager_model, _, eager_clips, _), (graphed_model, graphed_module, graphed_clips, optimizer) = results[False], results[True]
    assert eager_clips == 9 and graphed_clips == 0
    assert graphed_module._graphed_step is not None and graphed_module._graphed_step.eager_steps == 9
    lr = optimizer.param_groups[0]["lr"]
    assert lr is graphed_module._graphed_step.lrs[0]  # the schedule filled the step's tensor in place
    assert float(lr) == pytest.approx(0.01 * lr_factor(9, 9, 4, 0.1, 0.01))
    for a, b in zip(eager_model.parameters(), graphed_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_graphed_step_refuses_fp16_whose_gradients_need_unscaling() -> None:
    from sparse4d.engine.lightning_module import Sparse4DLightning

    optim = adamw_config()
    module = Sparse4DLightning(TinyDetector(), optim, total_steps=4, graphed_optimizer=True)
    module._trainer = SimpleNamespace(precision="16-mixed")  # what Lightning attaches before configure_optimizers
    with pytest.raises(ValueError, match="does not unscale fp16"):
        module.configure_optimizers()


def test_a_graphed_step_needs_adam_or_adamw() -> None:
    from sparse4d.engine.optim import build_optimizer

    sgd = SimpleNamespace(type="sgd", lr=0.01, weight_decay=0.0, momentum=0.9,
                          paramwise_cfg=SimpleNamespace(custom_keys=SimpleNamespace(img_backbone=SimpleNamespace(lr_mult=1.0))))
    with pytest.raises(ValueError, match="needs train.optim.type adam or adamw, not 'sgd'"):
        build_optimizer(TinyDetector(), sgd, capturable=True)


@pytest.mark.gpu
def test_the_trainer_captures_and_replays_the_graphed_step_on_a_gpu() -> None:
    """Lightning bf16-mixed on CUDA: the graphed run captures once, replays, and ends where Lightning's
    own clip + AdamW ends."""
    import pytorch_lightning as pl

    from sparse4d.engine.lightning_module import Sparse4DLightning

    optim = adamw_config()
    torch.manual_seed(0)
    data = [{"img": torch.randn(2, 1, 3, 2, 2)} for _ in range(12)]
    initial = TinyDetector()
    finals = []
    for graphed in (False, True):
        model = TinyDetector()
        model.load_state_dict(initial.state_dict())
        module = Sparse4DLightning(model, optim, total_steps=12, finite_check_interval=4, graphed_optimizer=graphed)
        trainer = pl.Trainer(max_epochs=1, accelerator="gpu", devices=1, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
        if graphed:
            assert module._graphed_step.graph is not None and module._graphed_step.eager_steps == 2
        finals.append([p.detach().float().cpu() for p in model.parameters()])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
