"""The optimisation recipe's parts: optimiser, learning-rate schedule, moving average of the weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam, or AdamW with weight decay on weight matrices and kernels only (not on biases and norms)."""
    if train.optimizer == "adamw":
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=train.lr)
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """One-cycle (warm-up to the peak `lr`, then cosine annealing to 1/25,000 of it), or linear warm-up
    then cosine, stepped once per optimiser step; None for a constant rate."""
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.lr, total_steps=max(total_steps, 2), pct_start=max(train.warmup_frac, 1e-3),
            div_factor=25.0, final_div_factor=1e3,
        )
    if train.schedule == "cosine":
        warm = max(1, int(total_steps * train.warmup_frac))
        return torch.optim.lr_scheduler.SequentialLR(
            optimizer,
            [torch.optim.lr_scheduler.LinearLR(optimizer, 0.05, 1.0, warm),
             torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, total_steps - warm), eta_min=train.lr * 1e-3)],
            milestones=[warm],
        )
    return None


class EMA:
    """Exponential moving average of a model's weights (buffers copied), with a warm-up so that early
    averages are not dominated by the random initialisation. Validation and prediction use it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        ema_params = list(self.module.parameters())
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, [p.detach() for p in model.parameters()], alpha=1 - d)
        for be, bm in zip(self.module.buffers(), model.buffers()):
            be.copy_(bm)
