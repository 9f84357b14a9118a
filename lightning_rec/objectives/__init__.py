"""Layer 1: objectives as pure functions on tensors: (loss, diagnostics) out, no parameters, no state.

- :func:`group_advantages`, :func:`clipped_policy_loss`, :func:`grpo_loss`: GRPO / PPO-clip with
  DAPO's clip-higher and token-mean aggregation and a k3 KL to a reference, for every RL method.
- :func:`a2po_loss`, :func:`a2po_advantages`, :func:`anchor_weights`: S-GRec's A2PO (business-anchored
  semantic advantage) and its reward_sum / adv_sum / business_only ablations.
- :func:`chunked_cross_entropy`, :func:`sampled_softmax_loss`, :func:`gbce_loss`, :func:`bce_loss`:
  next-item losses whose memory does not grow with the catalogue (exact chunked CE; sampled softmax
  with logQ correction; gSASRec's gBCE; SASRec's BCE).
"""

from lightning_rec.objectives.a2po import a2po_advantages, a2po_loss, anchor_weights
from lightning_rec.objectives.grpo import clipped_policy_loss, group_advantages, grpo_loss
from lightning_rec.objectives.item_losses import (
    bce_loss,
    chunked_cross_entropy,
    gbce_beta,
    gbce_loss,
    log_expected_candidate_count,
    sampled_softmax_loss,
)

__all__ = [
    "a2po_advantages",
    "a2po_loss",
    "anchor_weights",
    "bce_loss",
    "chunked_cross_entropy",
    "clipped_policy_loss",
    "gbce_beta",
    "gbce_loss",
    "group_advantages",
    "grpo_loss",
    "log_expected_candidate_count",
    "sampled_softmax_loss",
]
