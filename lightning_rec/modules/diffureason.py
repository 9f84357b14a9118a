"""DiffuReason: Bridging Latent Reasoning and Generative Refinement for Sequential Recommendation
(arXiv 2602.09744).

Thinking tokens reason over the user's history and form an intent hypothesis (Think); a diffusion
head refines it, treating the intent as a distribution and denoising the reasoning's noise
(Diffuse); GRPO aligns reasoning and refinement with the ranking metric, end to end in one stage.
The paper gives no code; the blocks follow ReaRec (thinking) and DreamRec/DiffuRec (diffusion), see
``../shared/specs/diffureason.md`` for what is the paper's and what is ours.

A training step, as the method's algorithm box (one batch of training windows; a "request" is a
window position whose target is the next item: the last position and ``requests_per_window - 1``
random others, all read from the one encoded window):

1. Backbone: h = encoder(history), next-item cross-entropy at every position (SASRec's loss).
2. Think: K thought vectors at each request position; the last is the intent hypothesis h0. The
   thoughts are gated residuals on the backbone's state, closed at init: the Think stage starts as
   the backbone and departs from it only as far as the loss pays for.
3. Diffuse: diffusion loss on the target item's embedding (direction, scaled to the hidden size)
   conditioned on the thoughts; the deterministic reverse process (eta = 0) refines h0 into the
   intent, from the thought-conditioned start that inference uses too (``DiffusionHead.forward``);
   cross-entropy over the full catalogue on the refined intent and on h0.
4. Align (after ``grpo_warmup_steps``), through the RL core (``lightning_rec.objectives.rollout``):
   a rollout of G stochastic reverse processes (eta > 0) at each window's last request, under the
   whole policy (encoder + thinking + head) without dropout, storing each step's log-probability;
   reward = NDCG (1 / log2(rank + 1)) or reciprocal rank of the target under each sampled intent,
   plus, with a ``reward_model`` (e.g. S-GRec's judge, :class:`~lightning_rec.modules.JudgeReward`),
   its weight times the model's mean reward of the top-``reward_model_slate`` items of the intent
   (S-GRec's "reward_sum" combination, arXiv 2602.10606); group z-scored advantages; then
   ``ppo_epochs`` passes of PPO-clipped updates against the stored
   log-probabilities, with the deterministic last reverse step masked out and an optional KL to a
   frozen copy of the whole policy. Steps 1-3 are trained in the same updates.

Total loss = CE_backbone + w_intent (CE_intent + CE_h0) + w_diffusion L_diffusion + w_grpo L_GRPO.
Optimisation is manual (several optimizer steps per batch once GRPO runs; ``global_step`` counts them).
The switches ``use_thinking``, ``use_diffusion`` and ``use_grpo`` give each ablation row from one
YAML; all three off is the backbone alone (SASRec with the default encoder).

Axes: b batch (requests), n history positions, k thoughts, d hidden, g group samples, s sampler
steps, i items (+ 1 for padding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from huggingface_hub import ModelCard
from torch import Tensor, nn

from lightning_rec.blocks.diffusion import DiffusionHead
from lightning_rec.blocks.sequence import SASRec as SASRecEncoder
from lightning_rec.blocks.sequence import SequenceEncoder
from lightning_rec.blocks.thinking import FeedbackName, ThinkingTokenEncoder
from lightning_rec.data.batches import TrainBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.metrics.ranking import chunked_topk
from lightning_rec.modules.manual_optimization import manual_optimizer_step
from lightning_rec.modules.rewards import ItemReward
from lightning_rec.modules.sequential_recommender import LossName, NegativeSampler, SequentialRecommender
from lightning_rec.objectives import PPOConfig, group_advantages
from lightning_rec.objectives.rollout import (
    PolicyEvaluation,
    diffusion_log_probs,
    diffusion_rollout,
    frozen_copy,
    ppo_update,
)

__all__ = ["DiffuReason"]

RewardName = Literal["ndcg", "reciprocal_rank"]


class DiffuReason(SequentialRecommender):
    """DiffuReason (arXiv 2602.09744) over any :class:`SequenceEncoder` backbone.

    Args:
        encoder: the backbone (SASRec by default in the configs; BERT4Rec, GRU4Rec, HSTU work).
        num_thinking_tokens: K latent reasoning steps (Think).
        thinking_feedback: ``"gated"`` (zero-initialised gated residual thoughts: Think starts as the
            backbone) or ``"projected"`` (LayerNorm + projection of the fed-back thought to an item
            input's scale); see :class:`ThinkingTokenEncoder`.
        thought_dropout: apply the backbone's dropout to the thought positions too (off by default:
            the one vector that carries the reasoning is not regularised like an item input).
        diffusion: the diffusion head (Diffuse); default ``DiffusionHead(hidden_size=encoder.hidden_size)``.
        requests_per_window: positions of each training window trained as requests by Think and
            Diffuse: the last one plus random others (causal encoders; a bidirectional encoder
            sees each window as one request, at its end). The backbone's loss covers every position
            anyway; more requests give the two stages more of the same signal at little cost,
            because the encoded window is shared (a KV cache for transformers).
        use_thinking: Think stage on; off, the diffusion is conditioned on the backbone's last state.
        use_diffusion: Diffuse stage on; off, the last thought (or the backbone state) is the intent.
        use_grpo: GRPO alignment on (needs ``use_diffusion``: the policy is the reverse process).
        intent_loss_weight: weight of the cross-entropy on the refined intent and on h0.
        diffusion_loss_weight: lambda_diff, weight of the diffusion (x0-MSE) loss.
        grpo_loss_weight: lambda_grpo, weight of the GRPO loss (> 0 when ``use_grpo``).
        grpo_warmup_steps: optimizer steps before GRPO starts (the reverse process must first be a
            sensible policy for group-relative rewards to say anything).
        group_size: G sampled intents per request.
        sampling_eta: DDIM eta of the sampled reverse processes (> 0: a stochastic policy).
        reward: ``"ndcg"`` (1 / log2(rank + 1), NDCG with one relevant item) or ``"reciprocal_rank"``.
        reward_model: a reward on recommended items added to ``reward`` in GRPO (any
            :class:`~lightning_rec.modules.ItemReward`, e.g. S-GRec's judge,
            :class:`~lightning_rec.modules.JudgeReward`; ``configs/diffureason/judge-reward.yaml``). Each
            sampled intent's reward becomes ``reward + reward_model_weight * mean reward_model score of
            its top reward_model_slate items`` (history excluded, as served). Frozen; set up with the
            training data. ``None``: the ranking reward alone.
        reward_model_weight: weight of the reward model's term (> 0).
        reward_model_slate: items of each sampled intent the reward model scores (its top ones).
        clip_epsilon: PPO clip range of the policy ratio.
        kl_coef: weight of the k3 KL to a frozen copy of the whole policy (encoder, thinking, head)
            taken when GRPO starts (0 disables the copy).
        ppo_epochs: PPO passes over each rollout; above 1 the ratio leaves 1 and the clip engages.
        num_minibatches: optimizer steps per pass (the batch's requests split at random).
        loss, num_negatives, negative_sampler, gbce_calibration, logit_offset, loss_chunk_size,
            cloze_mask_prob, learning_rate, weight_decay, warmup_steps, ks, mask_history, pretrained: as
            :class:`SequentialRecommender` (every next-item loss of the module uses ``loss``).
    """

    def __init__(
        self,
        encoder: SequenceEncoder,
        num_thinking_tokens: int = 2,
        thinking_feedback: FeedbackName = "gated",
        thought_dropout: bool = False,
        diffusion: DiffusionHead | None = None,
        requests_per_window: int = 8,
        use_thinking: bool = True,
        use_diffusion: bool = True,
        use_grpo: bool = True,
        intent_loss_weight: float = 1.0,
        diffusion_loss_weight: float = 1.0,
        grpo_loss_weight: float = 0.1,
        grpo_warmup_steps: int = 200,
        group_size: int = 8,
        sampling_eta: float = 1.0,
        reward: RewardName = "ndcg",
        reward_model: ItemReward | None = None,
        reward_model_weight: float = 1.0,
        reward_model_slate: int = 10,
        clip_epsilon: float = 0.2,
        kl_coef: float = 0.0,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        loss: LossName = "ce",
        num_negatives: int = 1,
        negative_sampler: NegativeSampler = "uniform",
        gbce_calibration: float = 0.75,
        logit_offset: bool = False,
        loss_chunk_size: int = 8192,
        cloze_mask_prob: float = 0.2,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(
            encoder,
            loss=loss,
            num_negatives=num_negatives,
            negative_sampler=negative_sampler,
            gbce_calibration=gbce_calibration,
            logit_offset=logit_offset,
            loss_chunk_size=loss_chunk_size,
            cloze_mask_prob=cloze_mask_prob,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            ks=ks,
            mask_history=mask_history,
        )
        if use_grpo and not use_diffusion:
            raise ValueError(
                "use_grpo=True needs use_diffusion=True: the GRPO policy is the reverse diffusion"
            )
        if requests_per_window < 1:
            raise ValueError(f"requests_per_window must be >= 1, got {requests_per_window}")
        if reward not in ("ndcg", "reciprocal_rank"):
            raise ValueError(f"reward must be 'ndcg' or 'reciprocal_rank', got {reward!r}")
        if use_grpo and (group_size < 2 or sampling_eta <= 0 or grpo_loss_weight <= 0):
            raise ValueError(
                f"GRPO needs group_size >= 2, sampling_eta > 0 (a stochastic policy) and "
                f"grpo_loss_weight > 0, got group_size={group_size}, sampling_eta={sampling_eta}, "
                f"grpo_loss_weight={grpo_loss_weight}"
            )
        if reward_model is not None and (
            not use_grpo or reward_model_weight <= 0 or not 1 <= reward_model_slate <= encoder.num_items
        ):
            raise ValueError(
                f"a reward_model needs use_grpo=True, reward_model_weight > 0 and reward_model_slate in "
                f"[1, num_items={encoder.num_items}], got use_grpo={use_grpo}, "
                f"reward_model_weight={reward_model_weight}, reward_model_slate={reward_model_slate}"
            )
        self.use_thinking = use_thinking
        self.use_diffusion = use_diffusion
        self.use_grpo = use_grpo
        self.thinking = (
            ThinkingTokenEncoder(encoder, num_thinking_tokens, thinking_feedback, thought_dropout)
            if use_thinking
            else None
        )
        if use_diffusion:
            diffusion = diffusion if diffusion is not None else DiffusionHead(hidden_size=encoder.hidden_size)
            if diffusion.hidden_size != encoder.hidden_size:
                raise ValueError(
                    f"diffusion.hidden_size={diffusion.hidden_size} must equal the encoder's "
                    f"hidden_size={encoder.hidden_size}"
                )
        self.diffusion = diffusion if use_diffusion else None
        self.requests_per_window = requests_per_window if encoder.causal else 1
        self.intent_loss_weight = intent_loss_weight
        self.diffusion_loss_weight = diffusion_loss_weight
        self.grpo_loss_weight = grpo_loss_weight
        self.grpo_warmup_steps = grpo_warmup_steps
        self.group_size = group_size
        self.sampling_eta = sampling_eta
        self.reward_name = reward
        # Frozen: the policy is rewarded by it, never trains it.
        self.reward_model = reward_model.requires_grad_(False) if reward_model is not None else None
        self.reward_model_weight = reward_model_weight
        self.reward_model_slate = reward_model_slate
        self.ppo = PPOConfig(
            ppo_epochs=ppo_epochs, num_minibatches=num_minibatches, clip_epsilon=clip_epsilon, kl_coef=kl_coef
        )
        # Several optimizer steps per batch once GRPO runs (PPO epochs over one rollout).
        self.automatic_optimization = False
        # The KL reference is a frozen snapshot of the whole policy, not a submodule: it is neither
        # trained nor saved (a resumed run takes a new snapshot when GRPO resumes).
        self._reference: nn.ModuleDict | None = None
        if pretrained is not None:
            self.load_pretrained(pretrained)

    @classmethod
    def hub_example(cls) -> tuple[DiffuReason, tuple[Tensor]]:
        """A tiny DiffuReason over a tiny SASRec (d 16) and a tiny diffusion head; histories ``(3 8)``."""
        encoder, inputs = SASRecEncoder.hub_example()
        head = DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4)
        return cls(encoder=encoder, diffusion=head, group_size=2), inputs

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The DiffuReason card with this run's test metrics as the Hub's eval results."""
        return render_model_card(
            "diffureason",
            config=self.config_tree(),
            metrics=self.test_results,
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            encoder=type(self.encoder).__name__,
            stages=", ".join(self._stages()),
            data_stats=f"{self.num_items} items",
        )

    def _stages(self) -> list[str]:
        names = [f"Think (K={self.thinking.num_thinking_tokens})" if self.thinking else "no Think"]
        names.append("Diffuse" if self.diffusion else "no Diffuse")
        names.append("GRPO" if self.use_grpo else "no GRPO")
        return names

    def setup(self, stage: str) -> None:
        """Vocabulary (parent), then the reward model reads what it needs from the training data."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.reward_model is not None and stage == "fit":
            if datamodule is None or not hasattr(datamodule, "data"):
                raise ValueError(
                    "DiffuReason's reward_model needs a datamodule with its data (a SequentialRecDataModule)"
                )
            self.reward_model.setup(datamodule.data)

    # ------------------------------------------------------------ Think, Diffuse
    def request_ids(self, input_ids: Tensor) -> Tensor:
        """``(b n)`` left-padded history -> the ids whose last position represents the next item.

        Causal encoders read the history as is; a bidirectional encoder drops the oldest item and
        appends its mask token (BERT4Rec's inference input).
        """
        if self.encoder.causal:
            return input_ids
        mask = torch.full_like(input_ids[:, :1], self.encoder.mask_token_id)
        return torch.cat([input_ids[:, 1:], mask], dim=1)

    def condition(
        self,
        request_ids: Tensor,
        prefix: tuple[Tensor, object] | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Think: ``(b n)`` request ids -> the diffusion condition ``(b k d)``; ``[:, -1]`` is h0.

        Without thinking the condition is the backbone's state ``(b 1 d)``. ``prefix``:
        ``encoder.encode_prefix(request_ids)`` when already computed. ``positions`` ``(b r)``: one
        request per position, each from the history up to it -> ``(b r k d)``.
        """
        return think(self.encoder, self.thinking, request_ids, prefix, positions)

    def request_positions(self, target_ids: Tensor) -> Tensor:
        """``(b n)`` window targets -> ``(b r)`` positions trained as requests: the last, then random
        supervised ones (a position with target 0, in a short window, is dropped by the caller)."""
        choice = torch.rand(target_ids.shape, device=target_ids.device)
        choice = torch.where(target_ids > 0, choice, -1.0)
        choice[:, -1] = 2.0  # the window's last position is always a request
        return choice.topk(min(self.requests_per_window, target_ids.shape[1]), dim=1).indices

    def user_representation(self, input_ids: Tensor) -> Tensor:
        """``(b n)`` history -> ``(b d)`` refined intent (deterministic: eta = 0 from the
        thought-conditioned start, exactly the process the training step ranks with)."""
        condition = self.condition(self.request_ids(input_ids))
        if self.diffusion is None:
            return condition[:, -1]
        return self.diffusion(condition)

    def intent_target(self, target_ids: Tensor) -> Tensor:
        """``(b)`` targets -> the diffusion's x0 ``(b d)``: the target embedding's direction at norm sqrt(d).

        The encoder's states leave a LayerNorm (norm about sqrt(d)) while item embeddings start near
        norm 0.02 sqrt(d); diffusing the raw embedding would pull the intent towards zero and fight
        the ranking loss. The direction is what a dot-product ranking needs. No gradient flows into
        the item table from here (stop-grad, as DreamRec), so the diffusion cannot collapse it.
        """
        target = self.item_embeddings()[target_ids].detach()
        return F.normalize(target, dim=-1) * math.sqrt(self.encoder.hidden_size)

    # ------------------------------------------------------------ training
    def training_step(self, batch: TrainBatch, batch_idx: int) -> None:
        step = partial(manual_optimizer_step, self)
        if self.use_grpo and self.global_step >= self.grpo_warmup_steps:
            logs = self.grpo_update(batch, step)  # 1-3 trained inside, with the policy loss
        else:
            loss, logs = self.supervised_loss(batch)  # 1-3
            step(loss)
            logs["train/loss"] = loss.detach()
        self.log_dict(logs, batch_size=len(batch))

    def supervised_loss(self, batch: TrainBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Steps 1-3 of the algorithm box on a batch: the loss and its parts to log."""
        # 1. Backbone: next-item loss at every position (cloze for bidirectional encoders).
        if self.encoder.causal:
            # The encoded history (a KV cache for transformers) is reused by the Think stage.
            request_prefix = hidden, _ = self.encoder.encode_prefix(batch.input_ids)  # (b n d)
            targets = batch.target_ids
        else:
            cloze_input, targets = self._cloze(batch.target_ids)
            hidden = self.encoder(cloze_input)
            request_prefix = None
        supervised = targets > 0
        loss = backbone_loss = self._next_item_loss(hidden[supervised], targets[supervised])
        logs = {"train/backbone_loss": backbone_loss.detach()}
        if self.thinking is None and self.diffusion is None:
            return loss, logs
        # 2. Think, at r positions of each window: (b r k d), request targets (b r).
        if self.requests_per_window > 1:
            positions = self.request_positions(batch.target_ids)
            conditions = self.condition(batch.input_ids, request_prefix, positions)
            request_targets = batch.target_ids.gather(1, positions)
        else:
            conditions = rearrange(
                self.condition(self.request_ids(batch.input_ids), request_prefix), "b k d -> b 1 k d"
            )
            request_targets = batch.target_ids[:, -1:]
        is_request = request_targets > 0
        condition, target = conditions[is_request], request_targets[is_request]  # (m k d), (m)
        hypothesis = condition[:, -1]
        # 3. Diffuse: learn to denoise the target intent, then rank with the refined intent.
        if self.diffusion is not None:
            diffusion_loss = self.diffusion.loss(self.intent_target(target), condition)
            # The served process (forward: eta = 0, the start's mean), not a noise-started one:
            # the intent this loss ranks with is the intent inference ranks with.
            intent = self.diffusion(condition)
            intent_loss = self._next_item_loss(intent, target) + self._next_item_loss(hypothesis, target)
            loss = loss + self.diffusion_loss_weight * diffusion_loss
            logs["train/diffusion_loss"] = diffusion_loss.detach()
        else:
            intent_loss = self._next_item_loss(hypothesis, target)
        loss = loss + self.intent_loss_weight * intent_loss
        logs["train/intent_loss"] = intent_loss.detach()
        return loss, logs

    def grpo_update(self, batch: TrainBatch, step: Callable[[Tensor], None]) -> dict[str, Tensor]:
        """4. Align, with steps 1-3 in the same updates; ``step`` takes a loss and makes an optimizer step.

        The policy is the whole reverse process given the history: encoder, thinking and head. A
        rollout samples G intents per window (each window's last request) under it, in eval mode (a
        dropout mask would be part of the action's density that no later pass could reproduce), and
        stores each stochastic step's log-probability; ``ppo_update`` then re-evaluates the current
        policy on the stored trajectories for each minibatch. The supervised losses of a minibatch's
        rows ride along the first time those rows are seen, at weight 1 / lambda_grpo: the PPO loss
        enters at weight 1, and AdamW's step is invariant to the loss scale, so this is the step of
        supervised + lambda_grpo * PPO.
        """
        request_ids = self.request_ids(batch.input_ids)
        targets = batch.target_ids[:, -1]
        if self.ppo.kl_coef > 0 and self._reference is None:
            policy = {"encoder": self.encoder, "thinking": self.thinking, "diffusion": self.diffusion}
            # object.__setattr__: an nn.Module attribute would be registered (trained, saved).
            object.__setattr__(
                self,
                "_reference",
                frozen_copy(nn.ModuleDict({k: v for k, v in policy.items() if v is not None})),
            )
        reference = self._reference
        with torch.no_grad(), self._policy_eval():
            reference_condition = (
                None
                if reference is None
                else think(
                    reference["encoder"],
                    reference["thinking"] if "thinking" in reference else None,
                    request_ids,
                )
            )
            rollout = diffusion_rollout(
                self.diffusion,
                self.condition(request_ids),
                self.group_size,
                eta=self.sampling_eta,
                reference=None if reference is None else reference["diffusion"],
                reference_condition=reference_condition,
            )
            rewards, model_rewards = self.rollout_rewards(rollout.x0, batch.input_ids, targets)
        supervised_done = torch.zeros(len(batch), dtype=torch.bool)
        logs: dict[str, Tensor] = {}

        def evaluate(groups: Tensor) -> PolicyEvaluation:
            fresh = groups[~supervised_done[groups]]
            supervised_done[fresh] = True
            # Zero, not None, on later passes: ppo_update averages the diagnostic over every update.
            auxiliary = torch.zeros((), device=batch.input_ids.device)
            if len(fresh) > 0:
                rows = fresh.to(batch.input_ids.device)
                loss, parts = self.supervised_loss(TrainBatch(batch.input_ids[rows], batch.target_ids[rows]))
                auxiliary = loss * (len(fresh) / len(batch)) / self.grpo_loss_weight
                logs.update(parts)
            with self._policy_eval():
                condition = self.condition(request_ids[groups.to(request_ids.device)])
                log_probs = diffusion_log_probs(self.diffusion, condition, rollout.select(groups))
            return PolicyEvaluation(log_probs, auxiliary_loss=auxiliary)

        diagnostics = ppo_update(rollout, group_advantages(rewards), evaluate, step, self.ppo)
        logs |= {f"train/grpo_{name}": value for name, value in diagnostics.items()}
        logs["train/grpo_reward_mean"] = rewards.mean()
        if model_rewards is not None:
            logs["train/grpo_reward_model_mean"] = model_rewards.mean()
        return logs

    @contextmanager
    def _policy_eval(self) -> Iterator[None]:
        """The policy (encoder, thinking, head) in eval mode, each submodule's mode restored after."""
        policy = [module for module in (self.encoder, self.thinking, self.diffusion) if module is not None]
        modes = [(module, module.training) for part in policy for module in part.modules()]
        for part in policy:
            part.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def rollout_rewards(
        self, intents: Tensor, history: Tensor, target_ids: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Sampled intents ``(b g d)``, histories ``(b n)`` and targets ``(b)`` -> the GRPO reward ``(b g)``
        and the reward model's term ``(b g)`` before its weight (``None`` without a reward model).

        reward = ranking reward + reward_model_weight * mean reward_model score of the intent's top
        ``reward_model_slate`` items, the history excluded (what would be served).
        """
        g = intents.shape[1]
        flat_intents = rearrange(intents, "b g d -> (b g) d")
        rewards = rearrange(
            self.ranking_reward(flat_intents, repeat(target_ids, "b -> (b g)", g=g)), "(b g) -> b g", g=g
        )
        if self.reward_model is None:
            return rewards, None
        histories = repeat(history, "b n -> (b g) n", g=g)
        slate, _ = chunked_topk(
            flat_intents, self.item_embeddings(), self.reward_model_slate, exclude=histories
        )
        model_rewards = rearrange(
            self.reward_model(histories, slate).float().mean(dim=-1), "(b g) -> b g", g=g
        )
        return rewards + self.reward_model_weight * model_rewards, model_rewards

    def ranking_reward(self, intents: Tensor, target_ids: Tensor) -> Tensor:
        """Intents ``(m d)``, targets ``(m)`` -> reward ``(m)``: the target's utility under full ranking.

        rank = 1 + the number of items scoring at least as high as the target (ties count against
        it, as the metrics do); NDCG reward 1 / log2(rank + 1), or reciprocal rank 1 / rank.
        """
        scores = intents @ self.item_embeddings().T  # (m i)
        scores[:, 0] = float("-inf")
        target_scores = scores.gather(1, target_ids[:, None])
        rank = (scores >= target_scores).sum(dim=1).float()  # the target itself counts once
        if self.reward_name == "ndcg":
            return 1.0 / torch.log2(rank + 1.0)
        return 1.0 / rank


def think(
    encoder: SequenceEncoder,
    thinking: ThinkingTokenEncoder | None,
    request_ids: Tensor,
    prefix: tuple[Tensor, object] | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """The Think stage of a policy given as its modules (the trained one or the KL reference's copy):
    request ids ``(b n)`` -> condition ``(b k d)`` (``(b r k d)`` at ``positions`` ``(b r)``); without
    thinking, the backbone's state ``(b 1 d)``."""
    if thinking is not None:
        return thinking(request_ids, prefix=prefix, positions=positions)
    hidden = prefix[0] if prefix is not None else encoder(request_ids)
    if positions is None:
        return hidden[:, -1:]
    return rearrange(
        hidden.gather(1, repeat(positions, "b r -> b r d", d=hidden.shape[-1])), "b r d -> b r 1 d"
    )
