"""Layer 1: objectives as pure functions on tensors: (loss, diagnostics) out, no parameters, no state.

- :func:`group_advantages`, :func:`clipped_policy_loss`, :func:`grpo_loss`: GRPO / PPO-clip with
  DAPO's clip-higher and token-mean aggregation and a k3 KL to a reference, for every RL method.
- :func:`a2po_loss`, :func:`a2po_advantages`, :func:`anchor_weights`: S-GRec's A2PO (business-anchored
  semantic advantage) and its reward_sum / adv_sum / business_only ablations.
- :func:`hepo_loss`, :func:`hepo_advantages`, :func:`process_rewards`, :func:`generalized_advantages`:
  GPR's HEPO over semantic-ID levels (process rewards, GAE, last-level z-score, per-level PPO clip, critic).
"""

from lightning_rec.objectives.a2po import a2po_advantages, a2po_loss, anchor_weights
from lightning_rec.objectives.grpo import clipped_policy_loss, group_advantages, grpo_loss
from lightning_rec.objectives.hepo import generalized_advantages, hepo_advantages, hepo_loss, process_rewards

__all__ = [
    "a2po_advantages",
    "a2po_loss",
    "anchor_weights",
    "clipped_policy_loss",
    "generalized_advantages",
    "group_advantages",
    "grpo_loss",
    "hepo_advantages",
    "hepo_loss",
    "process_rewards",
]
