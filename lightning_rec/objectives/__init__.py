"""Layer 1: objectives as pure functions on tensors: (loss, diagnostics) out, no parameters, no state.

- :func:`group_advantages`, :func:`clipped_policy_loss`, :func:`grpo_loss`: GRPO / PPO-clip with
  DAPO's clip-higher and token-mean aggregation and a k3 KL to a reference, for every RL method.
"""

from lightning_rec.objectives.grpo import clipped_policy_loss, group_advantages, grpo_loss

__all__ = [
    "clipped_policy_loss",
    "group_advantages",
    "grpo_loss",
]
