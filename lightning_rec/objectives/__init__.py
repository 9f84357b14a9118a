"""Layer 1: objectives as pure functions on tensors: (loss, diagnostics) out, no parameters, no state.

- :func:`ppo_loss`, :class:`PPOConfig`, :func:`kl_estimate`: PPO's clipped surrogate against stored
  old log-probs (per-step or per-sequence ratios, DAPO's clip-higher, step mask), a k1/k2/k3 KL to a
  frozen reference and an entropy bonus: the one loss of every RL method.
- :func:`group_advantages`, :func:`grpo_loss`: GRPO's group-relative advantages, and GRPO in one call.
- :func:`a2po_loss`, :func:`a2po_advantages`, :func:`anchor_weights`: S-GRec's A2PO (business-anchored
  semantic advantage) and its reward_sum / adv_sum / business_only ablations.
- :func:`chunked_cross_entropy`, :func:`sampled_softmax_loss`, :func:`gbce_loss`, :func:`bce_loss`:
  next-item losses whose memory does not grow with the catalogue (exact chunked CE; sampled softmax
  with logQ correction; gSASRec's gBCE; SASRec's BCE; :func:`uninformed_logit`, the start of their
  learned logit offset).
- :func:`hepo_loss`, :func:`hepo_advantages`, :func:`process_rewards`, :func:`generalized_advantages`:
  GPR's HEPO over semantic-ID levels (process rewards, GAE, last-level z-score, per-level PPO clip, critic);
  :func:`hepo_rollout` / :class:`HEPORollout` and :func:`critic_loss` run it through :func:`ppo_update`.
- :func:`plackett_luce_log_prob`, :func:`sample_plackett_luce`, :func:`ranking_ndcg`, :func:`expected_ndcg`,
  :func:`plackett_luce_reinforce_loss`, :func:`candidate_credit`: Plackett-Luce rankings for listwise
  rewards (Reasoning to Rank): log-prob, Gumbel sampling, NDCG, REINFORCE, per-candidate credit.
- :mod:`~lightning_rec.objectives.rollout`: categorical and diffusion rollouts and :func:`ppo_update`,
  which runs ``ppo_epochs`` passes over minibatches of one rollout (how modules drive it: its docstring).
"""

from lightning_rec.objectives.a2po import a2po_advantages, a2po_loss, anchor_weights
from lightning_rec.objectives.grpo import group_advantages, grpo_loss
from lightning_rec.objectives.hepo import (
    HEPORollout,
    critic_loss,
    generalized_advantages,
    hepo_advantages,
    hepo_loss,
    hepo_rollout,
    process_rewards,
)
from lightning_rec.objectives.item_losses import (
    bce_loss,
    chunked_cross_entropy,
    gbce_beta,
    gbce_loss,
    log_expected_candidate_count,
    sampled_softmax_loss,
    uninformed_logit,
)
from lightning_rec.objectives.plackett_luce import (
    CREDITS,
    candidate_credit,
    expected_ndcg,
    plackett_luce_log_prob,
    plackett_luce_reinforce_loss,
    ranking_ndcg,
    sample_plackett_luce,
)
from lightning_rec.objectives.ppo import PPOConfig, kl_estimate, ppo_loss
from lightning_rec.objectives.rollout import (
    CategoricalRollout,
    DiffusionRollout,
    PolicyEvaluation,
    Rollout,
    categorical_log_probs,
    categorical_rollout,
    diffusion_log_probs,
    diffusion_rollout,
    frozen_copy,
    minibatch_groups,
    ppo_update,
)

__all__ = [
    "CREDITS",
    "CategoricalRollout",
    "DiffusionRollout",
    "HEPORollout",
    "PPOConfig",
    "PolicyEvaluation",
    "Rollout",
    "a2po_advantages",
    "a2po_loss",
    "anchor_weights",
    "bce_loss",
    "candidate_credit",
    "categorical_log_probs",
    "categorical_rollout",
    "chunked_cross_entropy",
    "critic_loss",
    "diffusion_log_probs",
    "diffusion_rollout",
    "expected_ndcg",
    "frozen_copy",
    "gbce_beta",
    "gbce_loss",
    "generalized_advantages",
    "group_advantages",
    "grpo_loss",
    "hepo_advantages",
    "hepo_loss",
    "hepo_rollout",
    "kl_estimate",
    "log_expected_candidate_count",
    "minibatch_groups",
    "plackett_luce_log_prob",
    "plackett_luce_reinforce_loss",
    "ppo_loss",
    "ppo_update",
    "process_rewards",
    "ranking_ndcg",
    "sample_plackett_luce",
    "sampled_softmax_loss",
    "uninformed_logit",
]
