"""``SequentialRecommender``: the shared LightningModule of next-item recommenders.

It owns the uniform scoring interface (RecBole's ``calculate_loss`` / ``full_sort_predict`` idea):
``user_representation`` gives one vector per history, ``item_embeddings`` one per item, and a score
is their dot product. Methods subclass it and change the training step; evaluation, full-catalogue
ranking, recommendation and optimisation are written once here.

Axes: b batch, n max_len, d hidden, i items (+ 1 for padding), m supervised positions, g negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from lightning_rec.blocks.sequence import SASRec as SASRecEncoder
from lightning_rec.blocks.sequence import SequenceEncoder
from lightning_rec.data.batches import EvalBatch, PredictBatch, TrainBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.metrics.ranking import FullRankingMetrics, chunked_topk
from lightning_rec.modules.ranking_module import RankingModule
from lightning_rec.objectives.item_losses import (
    bce_loss,
    chunked_cross_entropy,
    gbce_beta,
    gbce_loss,
    log_expected_candidate_count,
    sampled_softmax_loss,
    uninformed_logit,
)

__all__ = ["SequentialRecommender"]

LossName = Literal["ce", "ce_chunked", "sampled_softmax", "gbce", "bce"]
NegativeSampler = Literal["uniform", "popularity"]
_LOSSES = get_args(LossName)


class SequentialRecommender(RankingModule):
    """Next-item recommendation over the full catalogue with any :class:`SequenceEncoder`.

    Causal encoders (SASRec, GRU4Rec, HSTU) train with a next-item loss at every position. A
    bidirectional encoder (BERT4Rec, ``encoder.causal == False``) trains with the cloze task: a
    random ``cloze_mask_prob`` share of the items is replaced by the mask token and predicted;
    at evaluation the mask token is appended after the history.

    Args:
        encoder: the sequence encoder (its ``num_items`` must match the data; the CLI links it).
        loss: the next-item loss (:mod:`lightning_rec.objectives.item_losses`).

            - ``"ce"``: full-softmax cross-entropy over the catalogue (the default: stronger, and the
              protocol of RecBole's reference numbers). Builds the ``(positions, items)`` logits.
            - ``"ce_chunked"``: the same loss and gradients, ``loss_chunk_size`` items at a time;
              memory no longer grows with positions x items (for catalogues of 10^5 items and more).
            - ``"sampled_softmax"``: softmax over the positive, the batch's other targets and
              ``num_negatives`` shared negatives from ``negative_sampler``, with the logQ correction.
              Needs the training items' popularity (taken from the datamodule's
              ``item_popularity()`` at ``fit``, or given with :meth:`set_item_popularity`).
            - ``"gbce"``: gSASRec's gBCE with ``num_negatives`` uniform negatives (shared by the
              batch) and calibration ``gbce_calibration``.
            - ``"bce"``: binary cross-entropy with ``num_negatives`` uniform negatives per position
              (the SASRec paper's setting).
        num_negatives: sampled negatives: per position for ``"bce"``, shared by the batch for
            ``"gbce"`` and ``"sampled_softmax"``.
        negative_sampler: ``"uniform"`` or ``"popularity"`` (the training popularity) negatives for
            ``"sampled_softmax"``.
        gbce_calibration: gSASRec's ``t`` in ``[0, 1]`` (0 is plain BCE; the paper uses 0.75).
        logit_offset: ``"bce"`` and ``"gbce"`` only: learn one scalar added to every logit, started at
            the best logit of an uninformed model (:func:`~lightning_rec.objectives.uninformed_logit`,
            about -6.6 for gBCE with 256 negatives). It never changes a ranking. **Use it with gBCE**:
            without it, 256 negatives first push every logit down through the (small, tied) item
            embeddings, and on ml-100k SASRec's validation NDCG@10 stayed at 0.015-0.019, below BCE
            with one negative (``bench/notes/scale_quality.md``). Off by default so that earlier
            configs and checkpoints keep their meaning.
        loss_chunk_size: items per chunk for ``"ce_chunked"``.
        cloze_mask_prob: share of items masked for bidirectional encoders.
        learning_rate, weight_decay: AdamW settings.
        warmup_steps: linear learning-rate warm-up from 0 over this many optimizer steps.
        ks: cut-offs of the Recall / NDCG / MRR metrics.
        mask_history: exclude items already in the history from the ranking.
        pretrained: a Hub repo id or folder saved by ``save_pretrained`` to start from: its weights
            (and vocabulary) replace the initial ones, with ``strict=True``. Not written back to
            ``config.json``, so a model fine-tuned from it loads without fetching it again.
    """

    hub_config_exclude = ("pretrained",)

    def __init__(
        self,
        encoder: SequenceEncoder,
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
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        if negative_sampler not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampler must be 'uniform' or 'popularity', got {negative_sampler!r}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {loss_chunk_size}")
        if logit_offset and loss not in ("bce", "gbce"):
            raise ValueError(
                f"logit_offset applies to loss 'bce' or 'gbce' only (a softmax ignores a shared offset), "
                f"got loss={loss!r}"
            )
        if not encoder.causal and encoder.mask_token_id is None:
            raise ValueError(
                f"{type(encoder).__name__} is bidirectional but has no mask token for cloze training"
            )
        self.save_hyperparameters(self.config_hparams())
        self.encoder = encoder
        self.loss_name = loss
        self.num_negatives = num_negatives
        self.negative_sampler = negative_sampler
        self.gbce_calibration = gbce_calibration
        self.loss_chunk_size = loss_chunk_size
        self.logit_offset: nn.Parameter | None = None
        if logit_offset:
            beta = gbce_beta(num_negatives, encoder.num_items, gbce_calibration) if loss == "gbce" else 1.0
            self.logit_offset = nn.Parameter(torch.tensor(uninformed_logit(num_negatives, beta)))
        # Training popularity for the sampled softmax's logQ correction: data, not weights, so it is
        # not saved (a model loaded for inference never needs it; training sets it again at fit).
        self.register_buffer("item_popularity", None, persistent=False)
        self.cloze_mask_prob = cloze_mask_prob
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.init_metrics(ks, mask_history)
        self.vocab: dict[str, Any] | None = None
        self.dataset_name = "unknown"
        if pretrained is not None:
            self.load_pretrained(pretrained)

    def load_pretrained(self, pretrained: str) -> None:
        """Replace the weights (and vocabulary) by those of a Hub repo or folder, with ``strict=True``.

        A subclass that adds blocks after ``super().__init__`` passes ``pretrained=None`` up and calls
        this itself once every block exists (a strict load needs them all).
        """
        start = type(self).from_pretrained(pretrained)
        self.load_state_dict(start.state_dict(), strict=True)
        self.vocab = start.vocab

    # ------------------------------------------------------- id maps / vocab
    def setup(self, stage: str) -> None:
        """Take the datamodule's id maps and item side table, to save them with the model."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "vocab"):
            self.vocab = datamodule.vocab()
            self.dataset_name = datamodule.dataset_name
        if stage == "fit" and self.loss_name == "sampled_softmax" and hasattr(datamodule, "item_popularity"):
            self.set_item_popularity(datamodule.item_popularity())

    def set_item_popularity(self, counts: Tensor) -> None:
        """``(num_items + 1)`` training counts of each item as a next item, for ``loss="sampled_softmax"``.

        Stored add-one smoothed, so that an item never seen in training still has a finite logQ.
        """
        if counts.shape != (self.num_items + 1,):
            raise ValueError(f"counts must have shape ({self.num_items + 1},), got {tuple(counts.shape)}")
        popularity = counts.float().clamp_min(0) + 1.0
        popularity[0] = 0.0  # padding is never a next item nor a negative
        self.item_popularity = (popularity / popularity.sum()).to(self.device)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_rec_config"] = self.config_tree()
        if self.vocab is not None:
            checkpoint["lightning_rec_vocab"] = self.vocab

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.vocab = checkpoint.get("lightning_rec_vocab", self.vocab)

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The SASRec-family card with this run's test metrics as the Hub's eval results."""
        return render_model_card(
            "sasrec",
            config=self.config_tree(),
            metrics=self.test_results,
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            method=type(self).__name__,
            encoder=type(self.encoder).__name__,
            loss=self.loss_name,
            data_stats=f"{self.num_items} items",
        )

    @torch.no_grad()
    def recommend_items(self, history: list[str], k: int = 10) -> list[str]:
        """Raw item ids of the top-``k`` next items after a history of raw item ids (oldest first).

        Needs the vocabulary saved with the model (trained on a datamodule, or loaded from the Hub).
        Unknown ids in ``history`` are ignored; known ones are never recommended (fewer than ``k``
        ids come back only when the catalogue has fewer unseen items).
        """
        if self.vocab is None:
            raise ValueError("this model has no vocabulary: train it on a datamodule or load it from the Hub")
        index = {item: i for i, item in enumerate(self.vocab["item_ids"]) if i > 0}
        known = [index[item] for item in history if item in index]
        recent = known[-self.encoder.max_len :]
        input_ids = torch.zeros(1, self.encoder.max_len, dtype=torch.long, device=self.device)
        if recent:
            input_ids[0, -len(recent) :] = torch.tensor(recent, device=self.device)
        seen = torch.tensor([[0, *known]], device=self.device)
        items, scores = self.recommend(input_ids, k=k, history=seen)
        return [self.vocab["item_ids"][i] for i in items[0][scores[0].isfinite()].tolist()]

    @classmethod
    def hub_example(cls) -> tuple[SequentialRecommender, tuple[Tensor]]:
        """A tiny model over a tiny SASRec encoder, and a batch of histories ``(3 8)``."""
        encoder, inputs = SASRecEncoder.hub_example()
        return cls(encoder=encoder), inputs

    # ------------------------------------------------------------ scoring
    @property
    def num_items(self) -> int:
        return self.encoder.num_items

    def item_embeddings(self) -> Tensor:
        """``(i d)``: one row per item index, row 0 the padding item."""
        return self.encoder.item_embeddings()

    def user_representation(self, input_ids: Tensor) -> Tensor:
        """``(b n)`` left-padded history -> ``(b d)`` representation of the next item."""
        if not self.encoder.causal:
            # BERT4Rec: drop the oldest item and append the mask token, whose output predicts the next item.
            mask = torch.full_like(input_ids[:, :1], self.encoder.mask_token_id)
            input_ids = torch.cat([input_ids[:, 1:], mask], dim=1)
        return self.encoder(input_ids)[:, -1]

    def forward(self, input_ids: Tensor) -> Tensor:
        """``(b n)`` history -> ``(b i)`` scores of every item (column 0, padding, is ``-inf``)."""
        scores = self.user_representation(input_ids) @ self.item_embeddings().T
        scores[:, 0] = float("-inf")
        return scores

    @torch.no_grad()
    def recommend(
        self, input_ids: Tensor, k: int = 10, exclude_history: bool = True, history: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-``k`` item indices ``(b k)`` and their scores ``(b k)`` for each history ``(b n)``.

        With ``exclude_history``, the items of ``history (b h)`` (0-padded; default ``input_ids``)
        score ``-inf``; so does padding. A row with fewer than ``k`` other items ends in ``-inf`` scores.
        """
        # Chunked over the catalogue (lightning_rec.metrics.chunked_topk): the (b i) score matrix is
        # never built, so `lightning-rec predict` stays within O(b (k + chunk)) memory at 10^6 items.
        exclude = (input_ids if history is None else history) if exclude_history else None
        return chunked_topk(
            self.user_representation(input_ids),
            self.item_embeddings(),
            min(k, self.num_items),
            exclude=exclude,
        )

    # ------------------------------------------------------------ training
    def training_step(self, batch: TrainBatch, batch_idx: int) -> Tensor:
        if self.encoder.causal:
            hidden = self.encoder(batch.input_ids)  # (b n d)
            targets = batch.target_ids
        else:
            cloze_input, targets = self._cloze(batch.target_ids)
            hidden = self.encoder(cloze_input)
        supervised = targets > 0
        loss = self._next_item_loss(hidden[supervised], targets[supervised])  # (m d), (m)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def _cloze(self, sequence: Tensor) -> tuple[Tensor, Tensor]:
        """Mask a random share of the real items of ``(b n)``; returns the masked input and targets
        (0 where nothing is to predict). The last real item is always masked, as at evaluation."""
        real = sequence > 0
        masked = (torch.rand(sequence.shape, device=sequence.device) < self.cloze_mask_prob) & real
        masked[:, -1] |= real[:, -1]
        cloze_input = torch.where(masked, torch.full_like(sequence, self.encoder.mask_token_id), sequence)
        return cloze_input, torch.where(masked, sequence, torch.zeros_like(sequence))

    def _next_item_loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """``hidden (m d)`` at supervised positions, ``targets (m)`` item indices -> scalar loss.

        The one place the ``loss`` option acts; subclasses (DiffuReason, S-GRec) call it for every
        next-item term, so they follow the configured loss too.
        """
        item_embeddings = self.item_embeddings()
        if self.loss_name == "ce":
            logits = hidden @ item_embeddings.T  # (m i)
            logits[:, 0] = float("-inf")  # never predict padding
            return F.cross_entropy(logits, targets)
        if self.loss_name == "ce_chunked":
            return chunked_cross_entropy(hidden, item_embeddings, targets, self.loss_chunk_size)
        if self.loss_name == "sampled_softmax":
            return self._sampled_softmax(hidden, item_embeddings, targets)
        if self.loss_name == "gbce":
            # Uniform negatives shared by the batch: every position still sees g uniform negatives
            # (gSASRec's sampling rate), for one (m d) x (d g) product instead of a gather of m g rows.
            negatives = torch.randint(1, self.num_items + 1, (self.num_negatives,), device=targets.device)
            return gbce_loss(
                hidden, item_embeddings, targets, negatives, self.gbce_calibration, self._offset()
            )
        # Uniform negatives per position, as the SASRec paper samples them.
        negatives = torch.randint(
            1, self.num_items + 1, (len(targets), self.num_negatives), device=targets.device
        )  # (m g)
        return bce_loss(hidden, item_embeddings, targets, negatives, self._offset())

    def _offset(self) -> Tensor | float:
        return 0.0 if self.logit_offset is None else self.logit_offset

    def _sampled_softmax(self, hidden: Tensor, item_embeddings: Tensor, targets: Tensor) -> Tensor:
        """In-batch plus ``num_negatives`` shared negatives, each logit corrected by its ``log Q``."""
        if self.item_popularity is None:
            raise ValueError(
                "loss='sampled_softmax' needs the training items' popularity for its logQ correction: "
                "fit with a datamodule that has item_popularity(), or call set_item_popularity(counts)"
            )
        popularity = self.item_popularity.to(hidden.device)
        if self.negative_sampler == "popularity":
            proposal = popularity
            negatives = torch.multinomial(popularity, self.num_negatives, replacement=True)  # (g)
        else:
            proposal = torch.full_like(popularity, 1.0 / self.num_items)
            proposal[0] = 0.0
            negatives = torch.randint(1, self.num_items + 1, (self.num_negatives,), device=hidden.device)
        log_q = log_expected_candidate_count(popularity, len(targets), proposal, self.num_negatives)
        return sampled_softmax_loss(hidden, item_embeddings, targets, negatives, log_q)

    # ---------------------------------------------------------- evaluation
    def update_metrics(self, batch: EvalBatch, metrics: FullRankingMetrics) -> None:
        query = self.user_representation(batch.input_ids)
        metrics.update_from_embeddings(query, self.item_embeddings(), batch.target, batch.history)

    #: what ``predict_step`` returns: the top ``prediction_k`` (``None``: the largest metric cut-off)
    #: items, seen ones excluded unless ``prediction_exclude_history`` is False. Inference settings, not
    #: hyperparameters: :class:`~lightning_rec.callbacks.RecommendationWriter` sets them from its own.
    prediction_k: int | None = None
    prediction_exclude_history: bool = True

    def predict_step(self, batch: PredictBatch | EvalBatch, batch_idx: int) -> dict[str, Tensor]:
        """``user_index (b)``, top item indices ``items (b k)`` and their ``scores (b k)``."""
        items, scores = self.recommend(
            batch.input_ids,
            k=self.prediction_k or max(self.hparams.ks),
            exclude_history=self.prediction_exclude_history,
            history=batch.history,
        )
        return {"user_index": batch.user_index, "items": items, "scores": scores}

    # ---------------------------------------------------------- optimiser
    def configure_optimizers(self):
        # Fused: one pass over each tensor instead of several. At 10^6 items the item table is 64M
        # parameters, and the unfused update took 0.57 s of a step on one core, the fused one 0.10 s.
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay, fused=True
        )
        if self.warmup_steps <= 0:
            return optimizer
        warmup = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
