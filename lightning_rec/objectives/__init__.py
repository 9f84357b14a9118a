"""Layer 1: objectives as pure functions on tensors: (loss, diagnostics) out, no parameters, no state.

- :func:`group_advantages`, :func:`clipped_policy_loss`, :func:`grpo_loss`: GRPO / PPO-clip with
  DAPO's clip-higher and token-mean aggregation and a k3 KL to a reference, for every RL method.
- :func:`a2po_loss`, :func:`a2po_advantages`, :func:`anchor_weights`: S-GRec's A2PO (business-anchored
  semantic advantage) and its reward_sum / adv_sum / business_only ablations.
"""

from lightning_rec.objectives.a2po import a2po_advantages, a2po_loss, anchor_weights
from lightning_rec.objectives.grpo import clipped_policy_loss, group_advantages, grpo_loss

__all__ = [
    "a2po_advantages",
    "a2po_loss",
    "anchor_weights",
    "clipped_policy_loss",
    "group_advantages",
    "grpo_loss",
]
