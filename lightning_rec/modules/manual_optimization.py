"""One optimiser step under Lightning's manual optimisation, shared by the RL modules.

RL updates (several PPO passes over one rollout, a rollout between two updates) need
``automatic_optimization = False``; Lightning then leaves the optimiser and scheduler steps to the
module. DiffuReason, S-GRec, GPR and Reasoning to Rank all step the same way.
"""

from __future__ import annotations

import lightning as L
from torch import Tensor

__all__ = ["manual_optimizer_step"]


def manual_optimizer_step(
    module: L.LightningModule, loss: Tensor, max_grad_norm: float | None = None
) -> None:
    """Zero the gradients, back-propagate ``loss`` through Lightning (precision plugin, DDP gradient
    sync), clip the gradients' global norm to ``max_grad_norm`` when given, then step the optimiser and
    the learning-rate scheduler, if the module configured one (Lightning does not under manual
    optimisation)."""
    optimizer = module.optimizers()
    optimizer.zero_grad()
    module.manual_backward(loss)
    if max_grad_norm is not None:
        module.clip_gradients(optimizer, gradient_clip_val=max_grad_norm, gradient_clip_algorithm="norm")
    optimizer.step()
    scheduler = module.lr_schedulers()
    if scheduler is not None:
        scheduler.step()
