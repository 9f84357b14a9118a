"""Reasoning to Rank (arXiv 2602.12530): a rationale per (user, candidate), a score head, Plackett-Luce RL.

An LLM reads a user's history and one candidate, writes a short rationale about that pair (one per
candidate, so there is no listwise prompt and no position bias), and a linear
:class:`~lightning_rec.blocks.ScoreHead` reads a score from the hidden state at the rationale's last
token. A user's scores define a Plackett-Luce distribution over rankings of the candidates
(:mod:`lightning_rec.objectives.plackett_luce`), so a listwise reward, the NDCG of a sampled
ranking, trains both the head and the LLM. Two stages, each one ``fit`` with its own YAML
(``configs/r2rank/``); the RL stage starts from the SFT stage's export (``init_from``).

``stage="sft"`` (cold start on teacher reasoning traces), one training step on a batch of training
lists whose candidates carry teacher rationales (:class:`~lightning_rec.datamodules.CandidateBatch`
from ``CandidateRankingDataModule(train_on="candidate_lists", teacher_rationales=...)``: the
catalogue's ground-truth rationales, or a user's JSON-lines file):

1. Teacher-force each candidate's rationale after its prompt, all ``b c`` sequences in one padded
   batch, and take the next-token NLL of the rationale tokens.
2. Score each candidate at the rationale's last token; the listwise loss is the Plackett-Luce
   negative log-likelihood of the positive ranked first (a softmax cross-entropy over the list).
3. One optimiser step on NLL + ``head_weight`` x listwise loss.

``stage="rl"``, one training step on a batch of training lists is one rollout:

1. Generate ``rationale_samples`` (G) rationales per (user, candidate), every one of the ``b c G``
   prompts in one padded batch (the runtime's ``batch_size`` permitting), and store their token
   log-probs under the behaviour policy and under a frozen copy of the policy the stage started
   from (the SFT policy, for the KL).
2. Score every candidate: ``b G c`` scores, G score vectors per user.
3. Credit each rationale (``credit``): its score's marginal contribution to the expected NDCG of its
   list, or the group z-score of its list's expected NDCG over the G lists of the user.
4. Sample ``ranking_samples`` rankings per list from PL(scores) by the Gumbel trick and take their
   NDCG: the head's REINFORCE reward (mean baseline).
5. ``ppo_epochs`` passes of ``num_minibatches`` updates (:func:`~lightning_rec.objectives.ppo_update`):
   PPO's clipped surrogate on the rationale tokens with their credit as advantage and a KL to the
   reference, plus ``head_weight`` x the head's REINFORCE loss on the same minibatch's scores.

``reasoning=False`` is the paper's ablation: no rationale, the score is read at the prompt's last
token; SFT trains the listwise loss alone and RL the REINFORCE loss alone.

Validation and test generate greedy rationales (temperature 0) and report HR@1/3/5, their mean and
NDCG@10 of the positive among the candidates (:class:`~lightning_rec.metrics.CandidateRankingMetrics`),
plus the rationale tokens generated per user.

Ours, not the paper's: the catalogue's rule-based teacher (the paper distils a larger LLM), the
counterfactual form of the marginal credit, and the listwise SFT loss of the head.

Axes: b users (lists), c candidates, g rationale samples per candidate (G), k sampled rankings,
r sequences (``b c`` or ``b g c``), p prompt tokens, s rationale tokens, d hidden size, v vocabulary.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_rec.agents.llm import HFCausalLM
from lightning_rec.blocks.heads import ScoreHead
from lightning_rec.data.catalogue_corpus import rationale_prompt
from lightning_rec.datamodules.candidates import CandidateBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.pretrained import push_saved_folder
from lightning_rec.metrics import CandidateRankingMetrics
from lightning_rec.modules.manual_optimization import manual_optimizer_step
from lightning_rec.objectives import PPOConfig
from lightning_rec.objectives.plackett_luce import (
    CREDITS,
    Credit,
    candidate_credit,
    plackett_luce_reinforce_loss,
    ranking_ndcg,
    sample_plackett_luce,
)
from lightning_rec.objectives.rollout import PolicyEvaluation, Rollout, frozen_copy, ppo_update

__all__ = ["ReasoningToRank"]

Stage = Literal["sft", "rl"]
WEIGHTS_FILE = "r2rank.safetensors"


class ReasoningToRank(L.LightningModule):
    """Reasoning to Rank on any Hugging Face causal LM (see the module docstring).

    Args:
        llm: the policy, an :class:`~lightning_rec.agents.HFCausalLM` (a Hub id or folder, optionally
            with an SMoA or LoRA adapter); its ``batch_size`` bounds the rows generated per padded batch.
        stage: ``"sft"`` or ``"rl"``.
        reasoning: generate a rationale before scoring (False: score from the prompt alone).
        score_head: the head (default: a zero-initialised :class:`~lightning_rec.blocks.ScoreHead` on
            the LLM's hidden size).
        init_from: a folder or Hub repo written by :meth:`save_pretrained` / :meth:`push_to_hub` (the SFT
            stage's ``export_dir``): its LLM and head weights are loaded (strict) before training.
        max_rationale_tokens: rationale length cap (generation also stops at end-of-text).
        temperature: sampling temperature of RL rollouts (evaluation is greedy).
        rationale_samples: G, rationales per (user, candidate) in RL (``credit="zscore"`` needs 2+).
        credit: ``"marginal"`` or ``"zscore"`` (see :func:`~lightning_rec.objectives.candidate_credit`).
        ranking_samples: PL rankings sampled per list for the head's REINFORCE (>= 2).
        credit_samples: Gumbel draws per expected-NDCG estimate of the credit.
        reward_cutoff: NDCG cutoff of the rewards; None ranks the whole list.
        head_weight: weight of the head's loss (listwise in SFT, REINFORCE in RL).
        learning_rate: AdamW learning rate of the LLM's trainable parameters.
        head_learning_rate: AdamW learning rate of the head.
        max_grad_norm: gradient clipping of every step (None: no clipping).
        kl_coef, ppo_epochs, num_minibatches, clip_epsilon: PPO on the rationale tokens
            (:class:`~lightning_rec.objectives.PPOConfig`); the KL is k3 to the frozen SFT policy.
        export_dir: when set, :meth:`save_pretrained` writes here at the end of ``fit``.
    """

    def __init__(
        self,
        llm: HFCausalLM,
        stage: Stage = "sft",
        reasoning: bool = True,
        score_head: ScoreHead | None = None,
        init_from: str | None = None,
        max_rationale_tokens: int = 32,
        temperature: float = 1.0,
        rationale_samples: int = 1,
        credit: Credit = "marginal",
        ranking_samples: int = 16,
        credit_samples: int = 64,
        reward_cutoff: int | None = None,
        head_weight: float = 1.0,
        learning_rate: float = 1e-5,
        head_learning_rate: float = 1e-3,
        max_grad_norm: float | None = 1.0,
        kl_coef: float = 0.05,
        ppo_epochs: int = 1,
        num_minibatches: int = 1,
        clip_epsilon: float = 0.2,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        if stage not in ("sft", "rl"):
            raise ValueError(f"stage must be 'sft' or 'rl', got {stage!r}")
        if credit not in CREDITS:
            raise ValueError(f"credit must be one of {CREDITS}, got {credit!r}")
        if credit == "zscore" and rationale_samples < 2:
            raise ValueError("credit='zscore' needs rationale_samples >= 2 (the group of the z-score)")
        if rationale_samples < 1 or ranking_samples < 2 or max_rationale_tokens < 1:
            raise ValueError(
                "need rationale_samples >= 1, ranking_samples >= 2 and max_rationale_tokens >= 1; got "
                f"{rationale_samples}, {ranking_samples}, {max_rationale_tokens}"
            )
        self.save_hyperparameters(ignore=["llm", "score_head"])
        self.llm = llm
        self.score_head = score_head if score_head is not None else ScoreHead(llm.model.config.hidden_size)
        if init_from is not None:
            self.load_weights(init_from)
        self.stage, self.reasoning = stage, reasoning
        self.max_rationale_tokens, self.temperature = max_rationale_tokens, temperature
        self.rationale_samples, self.credit, self.ranking_samples = rationale_samples, credit, ranking_samples
        self.credit_samples, self.reward_cutoff, self.head_weight = credit_samples, reward_cutoff, head_weight
        self.learning_rate, self.head_learning_rate = learning_rate, head_learning_rate
        self.max_grad_norm, self.export_dir = max_grad_norm, export_dir
        self.ppo = PPOConfig(
            ppo_epochs=ppo_epochs, num_minibatches=num_minibatches, clip_epsilon=clip_epsilon, kl_coef=kl_coef
        )
        # Several optimiser steps per batch in RL (PPO epochs x minibatches); SFT uses the same path.
        self.automatic_optimization = False
        self._reference: nn.Module | None = None  # the frozen SFT policy, kept out of the submodules
        self.val_metrics, self.test_metrics = CandidateRankingMetrics(), CandidateRankingMetrics()
        self.val_tokens, self.test_tokens = MeanMetric(), MeanMetric()
        self.test_results: dict[str, float] = {}

    # ------------------------------------------------------------------ sequences
    def prompt_ids(self, batch: CandidateBatch) -> list[list[int]]:
        """Token ids of the ``b c`` prompts, user-major: the history and one candidate, then ``"Why:"``."""
        return [
            self.llm.encode_prompt(rationale_prompt(history, title))
            for history, titles in zip(batch.history_titles, batch.candidate_titles, strict=True)
            for title in titles
        ]

    def _pad(self, prompts: list[list[int]], completions: list[list[int]]) -> tuple[Tensor, ...]:
        """Left-padded prompts ``(r p)`` and right-padded completions ``(r s)``, ids and masks: every
        completion then starts at the same column, so one slice of the logits serves all rows."""
        pad = self.llm.tokenizer.pad_token_id
        p, s = max(map(len, prompts)), max(map(len, completions))
        prompt_ids = torch.full((len(prompts), p), pad, dtype=torch.long)
        prompt_mask = torch.zeros(len(prompts), p, dtype=torch.long)
        completion_ids = torch.full((len(prompts), s), pad, dtype=torch.long)
        completion_mask = torch.zeros(len(prompts), s, dtype=torch.bool)
        for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            prompt_ids[row, p - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[row, p - len(prompt) :] = 1
            completion_ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
            completion_mask[row, : len(completion)] = True
        return tuple(t.to(self.device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask))

    def _forward(self, model: nn.Module, padded: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """One teacher-forced pass: ``(r s)`` log-probs of the completion tokens (0 on padding) and
        ``(r)`` scores read at each row's last real token (the prompt's last one when the completion is
        empty)."""
        prompt_ids, prompt_mask, completion_ids, completion_mask = padded
        p, s = prompt_ids.shape[1], completion_ids.shape[1]
        attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)
        output = model(
            input_ids=torch.cat([prompt_ids, completion_ids], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
            # Only the logits that predict completion tokens: (r s+1 v) instead of (r p+s v).
            logits_to_keep=s + 1,
        )
        logits = output.logits[:, :s].float()  # column p - 1 + j predicts completion token j
        log_probs = logits.log_softmax(-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
        score_positions = p - 1 + completion_mask.sum(1)
        scores = self.score_head(output.hidden_states[-1].float(), score_positions)
        return log_probs * completion_mask, scores

    @torch.no_grad()
    def _generate(self, batch: CandidateBatch, samples: int, temperature: float) -> tuple[list, list]:
        """Prompts and rationales of ``b c samples`` sequences, user-major then sample then candidate
        (row ``(i * samples + j) * c + l``: candidate l of sample j of user i); all prompts in one
        padded batch of the runtime."""
        prompts = self.prompt_ids(batch)
        c = batch.candidates.shape[1]
        # The runtime's rows are prompt-major, (b c g); ours are (b g c).
        order = rearrange(torch.arange(len(prompts) * samples), "(b c g) -> (b g c)", c=c, g=samples).tolist()
        if not self.reasoning:
            return [prompts[row // samples] for row in order], [[] for _ in order]
        texts = [
            rationale_prompt(history, title)
            for history, titles in zip(batch.history_titles, batch.candidate_titles, strict=True)
            for title in titles
        ]
        generation = self.llm.generate(
            texts, max_new_tokens=self.max_rationale_tokens, temperature=temperature, n=samples
        )
        return [prompts[row // samples] for row in order], [generation.token_ids[row] for row in order]

    def score(self, batch: CandidateBatch) -> tuple[Tensor, Tensor]:
        """``(b c)`` scores of a batch's candidates with greedy rationales, and ``(b)`` rationale tokens
        per user."""
        prompts, rationales = self._generate(batch, 1, temperature=0.0)
        with torch.no_grad():
            _, scores = self._forward(self.llm.model, self._pad(prompts, rationales))
        tokens = torch.tensor([len(r) for r in rationales], dtype=torch.float32, device=self.device)
        c = batch.candidates.shape[1]
        return rearrange(scores, "(b c) -> b c", c=c), rearrange(tokens, "(b c) -> b c", c=c).sum(1)

    # ------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        if self.stage == "rl" and self.reasoning and self.ppo.kl_coef > 0:
            object.__setattr__(self, "_reference", frozen_copy(self.llm.model))

    def training_step(self, batch: CandidateBatch, batch_idx: int) -> None:
        # No dropout: a dropout mask would be part of each token's probability that no later pass
        # reproduces (rollout.py), and the teacher-forced and the generated passes must agree.
        self.llm.model.eval()
        if self.stage == "sft":
            self._sft_step(batch)
        elif self.reasoning:
            self._rl_step(batch)
        else:
            self._rl_step_without_reasoning(batch)

    def _step(self, loss: Tensor) -> None:
        manual_optimizer_step(self, loss, self.max_grad_norm)

    def _sft_step(self, batch: CandidateBatch) -> None:
        c = batch.candidates.shape[1]
        if batch.rationales is None and self.reasoning:
            raise ValueError(
                "stage='sft' with reasoning needs teacher rationales in the training batches: "
                "CandidateRankingDataModule(train_on='candidate_lists', teacher_rationales=...)"
            )
        tokenizer = self.llm.tokenizer
        completions = (
            [
                tokenizer(rationale, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for rationales in batch.rationales
                for rationale in rationales
            ]
            if self.reasoning
            else [[] for _ in range(len(batch) * c)]
        )
        padded = self._pad(self.prompt_ids(batch), completions)
        log_probs, scores = self._forward(self.llm.model, padded)  # 1. + 2.
        tokens = padded[3].sum().clamp(min=1)
        nll = -log_probs.sum() / tokens
        listwise = F.cross_entropy(
            rearrange(scores, "(b c) -> b c", c=c), batch.positive_index.to(self.device)
        )
        loss = (nll if self.reasoning else 0.0) + self.head_weight * listwise
        self._step(loss)  # 3.
        self.log_dict(
            {"train/loss": loss, "train/rationale_nll": nll, "train/listwise_loss": listwise},
            batch_size=len(batch),
            prog_bar=True,
        )

    def _rl_step(self, batch: CandidateBatch) -> None:
        b, c, g = len(batch), batch.candidates.shape[1], self.rationale_samples
        prompts, rationales = self._generate(batch, g, self.temperature)  # 1.
        padded = self._pad(prompts, rationales)
        with torch.no_grad():
            old_log_probs, scores = self._forward(self.llm.model, padded)  # 2.
            ref_log_probs = None
            if self._reference is not None:
                ref_log_probs, _ = self._forward(self._reference, padded)
            relevance = F.one_hot(batch.positive_index.to(self.device), c).float()
            credit, list_rewards = candidate_credit(  # 3.
                rearrange(scores, "(b g c) -> b g c", g=g, c=c),
                relevance,
                method=self.credit,
                cutoff=self.reward_cutoff,
                num_samples=self.credit_samples,
            )
            lists = rearrange(scores, "(bg c) -> bg c", c=c)
            rankings = sample_plackett_luce(lists, self.ranking_samples)  # 4.
            list_relevance = repeat(relevance, "b c -> (b g) c", g=g)
            ranking_rewards = ranking_ndcg(rankings, list_relevance, cutoff=self.reward_cutoff)

        def by_list(values: Tensor | None) -> Tensor | None:
            return None if values is None else rearrange(values, "(bg c) s -> bg c s", c=c)

        rollout = Rollout(
            old_log_probs=by_list(old_log_probs),
            mask=by_list(padded[3]),
            ref_log_probs=by_list(ref_log_probs),
        )

        def evaluate(groups: Tensor) -> PolicyEvaluation:
            rows = rearrange(rearrange(groups, "m -> m 1") * c + torch.arange(c), "m c -> (m c)").to(
                self.device
            )
            log_probs, group_scores = self._forward(self.llm.model, tuple(t[rows] for t in padded))
            index = groups.to(self.device)
            head_loss, _ = plackett_luce_reinforce_loss(
                rearrange(group_scores, "(m c) -> m c", c=c), rankings[index], ranking_rewards[index]
            )
            return PolicyEvaluation(log_probs=by_list(log_probs), auxiliary_loss=self.head_weight * head_loss)

        diagnostics = ppo_update(
            rollout, rearrange(credit, "b g c -> (b g) c"), evaluate, self._step, self.ppo
        )
        self.log_dict(
            {f"train/ppo_{name}": value for name, value in diagnostics.items()}
            | {
                "train/reward": list_rewards.mean(),
                "train/credit_abs": credit.abs().mean(),
                "train/rationale_tokens": padded[3].sum(1).float().mean(),
            },
            batch_size=b,
            prog_bar=False,
        )

    def _rl_step_without_reasoning(self, batch: CandidateBatch) -> None:
        c = batch.candidates.shape[1]
        prompts, rationales = self._generate(batch, 1, self.temperature)
        _, scores = self._forward(self.llm.model, self._pad(prompts, rationales))
        lists = rearrange(scores, "(b c) -> b c", c=c)
        relevance = F.one_hot(batch.positive_index.to(self.device), c).float()
        rankings = sample_plackett_luce(lists.detach(), self.ranking_samples)
        rewards = ranking_ndcg(rankings, relevance, cutoff=self.reward_cutoff)
        loss, diagnostics = plackett_luce_reinforce_loss(lists, rankings, rewards)
        self._step(self.head_weight * loss)
        self.log_dict({"train/loss": loss, "train/reward": diagnostics["reward_mean"]}, batch_size=len(batch))

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.save_pretrained(self.export_dir)

    # ----------------------------------------------------------------- evaluation
    def _evaluate(self, batch: CandidateBatch, metrics: CandidateRankingMetrics, tokens: MeanMetric) -> None:
        scores, rationale_tokens = self.score(batch)
        metrics.update(scores, batch.positive_index.to(self.device))
        tokens.update(rationale_tokens)

    def _results(self, metrics: CandidateRankingMetrics, tokens: MeanMetric, split: str) -> dict[str, Tensor]:
        results = {f"{split}/{name}": value for name, value in metrics.compute().items()}
        results[f"{split}/rationale_tokens_per_user"] = tokens.compute()
        metrics.reset()
        tokens.reset()
        return results

    def validation_step(self, batch: CandidateBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics, self.val_tokens)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self._results(self.val_metrics, self.val_tokens, "val"))

    def test_step(self, batch: CandidateBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics, self.test_tokens)

    def on_test_epoch_end(self) -> None:
        results = self._results(self.test_metrics, self.test_tokens, "test")
        self.log_dict(results)
        self.test_results = {name: float(value) for name, value in results.items()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        llm_parameters = [p for p in self.llm.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            [
                {"params": llm_parameters, "lr": self.learning_rate},
                {"params": list(self.score_head.parameters()), "lr": self.head_learning_rate},
            ],
            weight_decay=0.0,
        )

    # ------------------------------------------------------------------------ hub
    def load_weights(self, source: str | Path) -> None:
        """Load the LLM and head weights of a :meth:`save_pretrained` folder or Hub repo (safetensors only;
        strict: a missing or unexpected key is an error naming it)."""
        directory = Path(source)
        if not directory.is_dir():
            # Only the weights file: nothing else of a downloaded repo is read.
            directory = Path(snapshot_download(str(source), allow_patterns=[WEIGHTS_FILE]))
        path = directory / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no {WEIGHTS_FILE}; init_from takes a folder or Hub repo written by save_pretrained"
            )
        state = load_file(path)
        modules = nn.ModuleDict({"llm": self.llm, "score_head": self.score_head})
        missing, unexpected = modules.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path}: the weights do not fit this model (same LLM, adapter and head needed): "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def generate_model_card(self, repo_id: str = "<org>/<name>") -> ModelCard:
        """The R2R card with this run's test results (from :meth:`test`, never typed in)."""
        hparams = {
            key: value for key, value in self.hparams.items() if key not in ("export_dir", "init_from")
        }
        return render_model_card(
            "r2rank",
            config=hparams,
            metrics=self.test_results,
            repo_id=repo_id,
            architecture=type(self.llm.model).__name__,
            stage=self.stage,
            reasoning=self.reasoning,
            credit=self.credit,
        )

    def save_pretrained(self, directory: str | Path, repo_id: str = "<org>/<name>") -> Path:
        """Write ``r2rank.safetensors`` (LLM, adapter and head weights), the tokenizer and ``README.md``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = nn.ModuleDict({"llm": self.llm, "score_head": self.score_head}).state_dict()
        # Tied embeddings share storage; safetensors refuses shared tensors, so each is saved as a copy.
        save_file(
            {name: value.detach().clone().contiguous() for name, value in state.items()},
            directory / WEIGHTS_FILE,
        )
        self.llm.tokenizer.save_pretrained(directory)
        self.generate_model_card(repo_id).save(directory / "README.md")
        return directory

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False) -> str:
        """Create ``repo_id`` if needed and upload :meth:`save_pretrained`'s folder as one commit."""
        return push_saved_folder(
            partial(self.save_pretrained, repo_id=repo_id), repo_id, "Reasoning to Rank", token, private
        )
