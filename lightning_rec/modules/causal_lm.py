"""``CausalLM``: pretrain (or continue pretraining) a Hugging Face causal LM on packed token blocks.

The project cannot download a pretrained LLM, so the language-model methods benchmark on a small
Qwen2 pretrained here on the synthetic catalogue's corpus
(:class:`~lightning_rec.datamodules.CatalogueCorpusDataModule`). The recipe is GPT-2's: next-token
cross-entropy on packed blocks, AdamW (no weight decay on norms and biases), linear warm-up then
cosine decay to ``min_lr_ratio`` of the peak, gradient clipping set in the Trainer.

Validation and test report the **token-level perplexity** ``exp(Σ NLL / Σ tokens)`` over every real
next-token prediction of the split (summed states, so the figure is exact under DDP and independent
of the batch size).

The result is a plain Hugging Face folder: :meth:`CausalLM.save_pretrained` writes the model
(``config.json``, ``model.safetensors``), the tokenizer and a model card, so
``AutoModelForCausalLM.from_pretrained(folder)`` and
:class:`~lightning_rec.agents.HFCausalLM` load it with no lightning-rec code. With ``export_dir``
set, the model is saved there when ``fit`` ends.

Axes: b batch, n tokens, v vocabulary.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import SumMetric

from lightning_rec.data.catalogue_corpus import CausalLMBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.pretrained import push_saved_folder, resolve_pretrained

__all__ = ["CausalLM"]


class CausalLM(L.LightningModule):
    """Next-token pretraining of a Hugging Face ``AutoModelForCausalLM``.

    Args:
        model_config: a Transformers config as a dict with ``model_type`` (``"qwen2"``, ``"llama"``),
            for a randomly initialised model; its ``vocab_size`` must hold the tokenizer's.
        base_model: a Hub id or folder to continue pretraining instead (safetensors only, never
            ``trust_remote_code``); exclusive with ``model_config``.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW decay of the matrices (norms, biases and embeddings are not decayed).
        warmup_steps: linear warm-up from 0 over this many optimizer steps.
        min_lr_ratio: the cosine schedule ends at this share of the peak, at the Trainer's last step.
        export_dir: when set, :meth:`save_pretrained` writes the model here at the end of ``fit``.
        init_seed: seed of the random initialisation.
    """

    def __init__(
        self,
        model_config: dict[str, Any] | None = None,
        base_model: str | None = None,
        learning_rate: float = 3e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        export_dir: str | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if (base_model is None) == (model_config is None):
            raise ValueError(
                "give exactly one of model_config (a random model) and base_model (a checkpoint)"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.save_hyperparameters()
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.export_dir = export_dir
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = _build_model(model_config, base_model)
        self.model.train()  # Transformers returns models in eval mode; Lightning keeps the mode it finds
        self.tokenizer = None
        self.dataset_name = "unknown"
        self.val_nll, self.val_tokens = SumMetric(), SumMetric()
        self.test_nll, self.test_tokens = SumMetric(), SumMetric()
        self.test_results: dict[str, float] = {}

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def setup(self, stage: str) -> None:
        """Take the datamodule's tokenizer (saved with the model) and check it fits the vocabulary."""
        datamodule = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if tokenizer is None:
            return
        rows = self.model.get_input_embeddings().num_embeddings
        if len(tokenizer) > rows:
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {rows}; "
                f"set model_config.vocab_size >= {len(tokenizer)}"
            )
        self.tokenizer = tokenizer
        self.dataset_name = type(datamodule).__name__
        self.model.config.pad_token_id = tokenizer.pad_token_id
        self.model.config.eos_token_id = tokenizer.eos_token_id

    # ------------------------------------------------------------ training
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``(b n)`` token ids -> ``(b n v)`` next-token logits."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def token_nll(self, batch: CausalLMBatch) -> tuple[Tensor, Tensor]:
        """Summed next-token negative log-likelihood of ``batch`` and the number of predicted tokens.

        The prediction at position ``t`` is scored against the label at ``t + 1`` (labels ``-100``
        are skipped), which is what the Hugging Face loss averages.
        """
        logits = self(batch.input_ids, batch.attention_mask)[:, :-1]  # (b n-1 v)
        targets = batch.labels[:, 1:]  # (b n-1)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
        return nll, (targets != -100).sum()

    def training_step(self, batch: CausalLMBatch, batch_idx: int) -> Tensor:
        nll, tokens = self.token_nll(batch)
        loss = nll / tokens.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def _evaluate(self, batch: CausalLMBatch, nll_metric: SumMetric, token_metric: SumMetric) -> None:
        nll, tokens = self.token_nll(batch)
        nll_metric.update(nll)
        token_metric.update(tokens.float())

    def _perplexity(self, nll_metric: SumMetric, token_metric: SumMetric) -> dict[str, Tensor]:
        loss = nll_metric.compute() / token_metric.compute()
        nll_metric.reset()
        token_metric.reset()
        return {"loss": loss, "perplexity": loss.exp()}

    def validation_step(self, batch: CausalLMBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_nll, self.val_tokens)

    def on_validation_epoch_end(self) -> None:
        for name, value in self._perplexity(self.val_nll, self.val_tokens).items():
            self.log(f"val/{name}", value, prog_bar=name == "perplexity")

    def test_step(self, batch: CausalLMBatch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_nll, self.test_tokens)

    def on_test_epoch_end(self) -> None:
        results = {f"test/{k}": v for k, v in self._perplexity(self.test_nll, self.test_tokens).items()}
        self.log_dict(results)
        self.test_results = {name: float(value) for name, value in results.items()}

    def on_fit_end(self) -> None:
        if self.export_dir is not None and self.trainer.is_global_zero:
            self.save_pretrained(self.export_dir)

    # ---------------------------------------------------------- optimiser
    def configure_optimizers(self):
        # GPT-2 / nanoGPT: decay matrices only; decaying norm gains, biases or embeddings hurts.
        decay = [p for n, p in self.model.named_parameters() if p.dim() >= 2 and "embed" not in n]
        keep = [p for n, p in self.model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": keep, "weight_decay": 0.0}],
            lr=self.learning_rate,
            betas=(0.9, 0.95),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = LambdaLR(optimizer, _warmup_cosine(self.warmup_steps, total, self.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------ hub
    def generate_model_card(self, repo_id: str = "<org>/<name>") -> ModelCard:
        """The catalogue-LM card with this run's test perplexity (from :meth:`test`, never typed in)."""
        results = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(self.test_results.items()))
        return render_model_card(
            "catalogue_lm",
            config={key: value for key, value in self.hparams.items() if key != "export_dir"},
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            parameters=f"{self.num_parameters:,}",
            architecture=type(self.model).__name__,
            perplexity_table=(
                "| metric | value |\n|---|---|\n" + results
                if results
                else "No test perplexity was recorded for this checkpoint."
            ),
        )

    def save_pretrained(self, directory: str | Path, repo_id: str = "<org>/<name>") -> Path:
        """Write a plain Hugging Face folder: model (safetensors), tokenizer and ``README.md``."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: train on a datamodule with a tokenizer, or set .tokenizer first")
        directory = Path(directory)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        self.generate_model_card(repo_id).save(directory / "README.md")
        return directory

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool = False) -> str:
        """Create ``repo_id`` if needed and upload :meth:`save_pretrained`'s folder as one commit."""
        return push_saved_folder(
            partial(self.save_pretrained, repo_id=repo_id), repo_id, "catalogue LM", token, private
        )


def _build_model(model_config: dict[str, Any] | None, base_model: str | None) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_config is None:
        return AutoModelForCausalLM.from_pretrained(
            resolve_pretrained(base_model), use_safetensors=True, trust_remote_code=False, dtype=torch.float32
        )
    fields = dict(model_config)
    if "model_type" not in fields:
        raise ValueError(f"model_config needs a 'model_type' (e.g. 'qwen2'), got keys {sorted(fields)}")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))


def _warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """Learning-rate factor at an optimizer step: linear warm-up, then cosine from 1 to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
