"""``AdapterFineTune``: fine-tune a Hugging Face classifier or causal LM with SMoA, LoRA or all weights.

The method is a constructor argument, so one YAML switches between them:

- ``"smoa"``: the structured modulation adapter (arXiv 2601.07507, :mod:`lightning_rec.blocks.smoa`)
  on ``target_modules``;
- ``"lora"``: PEFT's LoRA with the same ``r``, ``alpha``, ``dropout`` and targets (the comparison);
- ``"full"``: every weight trains;
- ``"frozen"``: the base stays frozen and only the classification head trains (the baseline an
  adapter must beat).

A classifier also trains its new head (``classifier`` / ``score``, PEFT's ``modules_to_save``).

The base model is a Hub id or a local folder (``base_model``), loaded from safetensors only and never
with ``trust_remote_code``, in float32 (pick the Trainer's ``precision`` for mixed precision); or,
for tests and demos, a randomly initialised model built from ``model_config``
(``{"model_type": "qwen2", "hidden_size": 32, ...}``) with the tokenizer named by ``tokenizer``.
Randomly initialised weights (a ``model_config`` model, a new head, the adapter) are drawn under
``init_seed``, so the same arguments rebuild the same starting model.

Only the trained tensors are saved: ``save_pretrained`` writes ``config.json`` (the constructor tree,
naming the base model), the model card, ``vocab.json`` (label names) and the weights:
PEFT's layout (``adapter_config.json`` + ``adapter_model.safetensors``, loadable by PEFT, see
:mod:`lightning_rec.blocks.smoa`) for ``smoa`` and ``lora``, ``model.safetensors`` with the trained
tensors (head, or all weights) for ``frozen`` and ``full``. ``from_pretrained`` rebuilds the base from
its name and loads those tensors with a strict key check. Lightning checkpoints likewise hold only the
trained tensors (plus the SMoA partition), and :meth:`AdapterFineTune.load_state_dict` accepts them.

Batches are strings (:mod:`lightning_rec.datamodules.text_tasks`, whose ``task`` names the same
two tasks); the module tokenizes them.
Axes: b batch, n tokens, v vocabulary, c classes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import lightning as L
import torch
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelCard, snapshot_download
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_rec.blocks.smoa import PartitionName, inject_smoa, save_smoa, smoa_state_dict
from lightning_rec.datamodules.text_tasks import ClassificationBatch, InstructionBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.config_tree import instantiate_tree
from lightning_rec.hub.mixin import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, HubMixin, check_vocab, read_json
from lightning_rec.hub.peft_layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    PEFT_KEY_PREFIX,
    check_adapter_keys,
    read_peft_adapter,
    write_peft_adapter,
)
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained

__all__ = ["AdapterFineTune"]

#: the task heads a classifier trains besides its adapter (PEFT's SEQ_CLS ``modules_to_save``).
HEAD_NAMES = ("classifier", "score")
IGNORE_INDEX = -100

TaskName = Literal["classification", "instruction"]
MethodName = Literal["smoa", "lora", "full", "frozen"]
T = TypeVar("T", bound="AdapterFineTune")


class AdapterFineTune(HubMixin, L.LightningModule):
    """Fine-tune a Hugging Face model on a text task with SMoA, PEFT LoRA, full fine-tuning or a frozen base.

    Args:
        base_model: Hub id or folder of the pretrained checkpoint (exclusive with ``model_config``).
        model_config: a Transformers config as a dict with ``model_type``, for a randomly
            initialised model (tests, demos); needs ``tokenizer``.
        tokenizer: Hub id or folder of the tokenizer (default: ``base_model``).
        task: ``"classification"`` (sequence classifier, batches of texts and labels) or
            ``"instruction"`` (causal LM, batches of prompts and responses, loss on the responses).
        num_labels: classes of a classifier; must equal the datamodule's ``num_labels``.
        method: ``"smoa"``, ``"lora"``, ``"full"`` or ``"frozen"`` (see the module docstring).
        target_modules: the adapted layers, PEFT's syntax (``["query", "value"]`` for BERT,
            ``["q_proj", "v_proj"]`` for Llama / Qwen2, or a regex).
        r, alpha, dropout: the adapter's rank budget, scale numerator (update times ``alpha / r``) and
            input dropout (SMoA and LoRA).
        num_blocks, partition: SMoA's ``K`` and block partition.
        max_length: tokens per example (longer inputs are truncated).
        learning_rate, weight_decay, warmup_steps: AdamW over the trained tensors, linear warm-up.
        init_seed: seed of every random initialisation done here.
    """

    def __init__(
        self,
        base_model: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        task: TaskName = "classification",
        num_labels: int | None = None,
        method: MethodName = "smoa",
        target_modules: Sequence[str] | str = ("query", "value"),
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        num_blocks: int = 2,
        partition: PartitionName = "spectral",
        max_length: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if (base_model is None) == (model_config is None):
            raise ValueError(
                "give exactly one of base_model (a checkpoint) and model_config (a random model)"
            )
        if task not in ("classification", "instruction"):
            raise ValueError(f"task must be 'classification' or 'instruction', got {task!r}")
        if method not in ("smoa", "lora", "full", "frozen"):
            raise ValueError(f"method must be 'smoa', 'lora', 'full' or 'frozen', got {method!r}")
        if task == "classification" and (num_labels is None or num_labels < 2):
            raise ValueError(f"a classifier needs num_labels >= 2, got {num_labels}")
        if task == "instruction" and method == "frozen":
            raise ValueError("method='frozen' trains the classification head only; a causal LM has none")
        if tokenizer is None and base_model is None:
            raise ValueError("a model built from model_config needs a tokenizer (a Hub id or folder)")
        self.save_hyperparameters(self.config_hparams())
        self.base_model, self.task, self.method = base_model, task, method
        self.num_labels, self.max_length = num_labels, max_length
        self.learning_rate, self.weight_decay, self.warmup_steps = learning_rate, weight_decay, warmup_steps

        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(tokenizer or base_model))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = self._build_model(model_config)
            targets = target_modules if isinstance(target_modules, str) else list(target_modules)
            self._attach_method(targets, r, alpha, dropout, num_blocks, partition)

        if task == "classification":
            self.val_accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
            self.test_accuracy = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_results: dict[str, float] = {}
        self.vocab: dict[str, Any] | None = None
        self.dataset_name = "unknown"

    # ----------------------------------------------------------------- building
    def _build_model(self, model_config: dict[str, Any] | None) -> nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification if self.task == "classification" else AutoModelForCausalLM
        labels = {"num_labels": self.num_labels} if self.task == "classification" else {}
        if model_config is not None:
            fields = dict(model_config)
            if "model_type" not in fields:
                raise ValueError(
                    f"model_config needs a 'model_type' (e.g. 'qwen2'), got keys {sorted(fields)}"
                )
            model = auto.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields, **labels))
        else:
            model = auto.from_pretrained(
                resolve_pretrained(self.base_model),
                use_safetensors=True,
                trust_remote_code=False,
                dtype=torch.float32,
                **labels,
            )
        model.train()  # Transformers returns models in eval mode; Lightning keeps the mode it finds
        vocab_size = model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > vocab_size:
            raise ValueError(
                f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary {vocab_size}"
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        # Decoder classifiers (Qwen2, Llama) find each row's last real token through the pad id.
        model.config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def _attach_method(
        self, targets: list[str] | str, r: int, alpha: float, dropout: float, num_blocks: int, partition: str
    ) -> None:
        if self.method == "lora":
            from peft import LoraConfig, get_peft_model

            task_type = "SEQ_CLS" if self.task == "classification" else "CAUSAL_LM"
            config = LoraConfig(
                task_type=task_type, target_modules=targets, r=r, lora_alpha=alpha, lora_dropout=dropout
            )
            self.model = get_peft_model(self.model, config)  # freezes the base, trains LoRA + the head
            return
        if self.method == "smoa":
            inject_smoa(self.model, targets, r, num_blocks, alpha, dropout, partition)  # freezes the rest
        elif self.method == "frozen":
            self.model.requires_grad_(False)
        for name in self.head_names():
            self.model.get_submodule(name).requires_grad_(True)

    def head_names(self) -> list[str]:
        """The classification head modules of the base model (none for a causal LM)."""
        if self.task != "classification":
            return []
        base = self.model.get_base_model() if self.method == "lora" else self.model
        heads = [name for name, _ in base.named_children() if name in HEAD_NAMES]
        if not heads:
            raise ValueError(f"{type(base).__name__} has no classification head named one of {HEAD_NAMES}")
        return heads

    # ------------------------------------------------------------- encoding
    def encode_texts(self, texts: list[str]) -> dict[str, Tensor]:
        """``b`` texts -> ``input_ids (b n)`` and ``attention_mask (b n)`` on the module's device."""
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: encoded[key].to(self.device) for key in ("input_ids", "attention_mask")}

    def encode_instructions(self, prompts: list[str], responses: list[str]) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` and ``labels (b n)``: prompt + response + end token, right
        padded; ``labels`` is ``-100`` on the prompt and the padding, so only the response is learned.
        (Label ``t`` is the token at ``t``; the loss shifts it.)"""
        end = (
            self.tokenizer.eos_token_id
            if self.tokenizer.eos_token_id is not None
            else self.tokenizer.sep_token_id
        )
        if end is None:
            raise ValueError("the tokenizer has neither an eos nor a sep token to end a response")
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = self.tokenizer(responses, add_special_tokens=False)["input_ids"]
        rows = []
        for prompt, response in zip(prompt_ids, response_ids, strict=True):
            # Past max_length, the prompt loses its oldest tokens first: every row keeps a target.
            target = [*response, end][: self.max_length]
            room = self.max_length - len(target)
            context = prompt[-room:] if room > 0 else []
            rows.append((context + target, [IGNORE_INDEX] * len(context) + target))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows])
        labels = torch.tensor([targets + [IGNORE_INDEX] * (width - len(targets)) for _, targets in rows])
        attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "labels": labels.to(self.device),
        }

    # ------------------------------------------------------------- forward
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(b n)`` token ids and mask -> logits ``(b c)`` (classification) or ``(b n v)`` (causal LM)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    def _loss(self, batch: ClassificationBatch | InstructionBatch) -> tuple[Tensor, Tensor, Tensor | None]:
        """The batch's mean loss, its weight (examples or response tokens) and predicted classes (or None)."""
        if self.task == "classification":
            if not isinstance(batch, ClassificationBatch):
                raise TypeError(
                    f"task='classification' needs ClassificationBatch batches, got {type(batch).__name__}"
                )
            logits = self(**self.encode_texts(batch.texts))  # (b c)
            return F.cross_entropy(logits, batch.labels), logits.new_tensor(len(batch)), logits.argmax(-1)
        if not isinstance(batch, InstructionBatch):
            raise TypeError(f"task='instruction' needs InstructionBatch batches, got {type(batch).__name__}")
        encoded = self.encode_instructions(batch.prompts, batch.responses)
        logits = self(encoded["input_ids"], encoded["attention_mask"])  # (b n v)
        # Token t predicts token t + 1.
        targets = encoded["labels"][:, 1:]
        loss = F.cross_entropy(
            rearrange(logits[:, :-1], "b n v -> (b n) v"), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        return loss, (targets != IGNORE_INDEX).sum(), None

    def training_step(self, batch: ClassificationBatch | InstructionBatch, batch_idx: int) -> Tensor:
        loss, _, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: ClassificationBatch | InstructionBatch, batch_idx: int) -> None:
        loss, weight, predictions = self._loss(batch)
        self.val_loss.update(loss, weight)
        if predictions is not None:
            self.val_accuracy.update(predictions, batch.labels)

    def test_step(self, batch: ClassificationBatch | InstructionBatch, batch_idx: int) -> None:
        loss, weight, predictions = self._loss(batch)
        self.test_loss.update(loss, weight)
        if predictions is not None:
            self.test_accuracy.update(predictions, batch.labels)

    def _epoch_metrics(self, stage: str) -> dict[str, float]:
        metrics = {f"{stage}/loss": getattr(self, f"{stage}_loss")}
        if self.task == "classification":
            metrics[f"{stage}/accuracy"] = getattr(self, f"{stage}_accuracy")
        results = {name: metric.compute() for name, metric in metrics.items()}
        for metric in metrics.values():
            metric.reset()
        self.log_dict(results, prog_bar=True)
        return {name: float(value) for name, value in results.items()}

    def on_validation_epoch_end(self) -> None:
        self._epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        # Kept for the model card: its results always come from this run's own test.
        self.test_results = self._epoch_metrics("test")

    def configure_optimizers(self):
        trained = [parameter for parameter in self.parameters() if parameter.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.warmup_steps <= 0:
            return optimizer
        warmup = LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    # ------------------------------------------------------------- data link
    def setup(self, stage: str) -> None:
        """Check the datamodule's task and labels against the model, and keep its label names."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "task"):
            return
        if datamodule.task != self.task:
            raise ValueError(f"the model's task is {self.task!r} but the data's is {datamodule.task!r}")
        if self.task == "classification" and datamodule.num_labels != self.num_labels:
            raise ValueError(
                f"the data has {datamodule.num_labels} labels but model num_labels is {self.num_labels}"
            )
        self.vocab = datamodule.vocab() or None
        self.dataset_name = datamodule.dataset_name

    # ---------------------------------------------------------- trained tensors
    def trained_keys(self) -> set[str]:
        """Names in ``state_dict()`` of what training changes: trainable parameters and the SMoA partition."""
        return {name for name, p in self.named_parameters() if p.requires_grad} | set(smoa_state_dict(self))

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False):
        """Load a full state dict, or (what this module's checkpoints hold) exactly the trained tensors:
        with ``strict``, any other partial set is an error naming the missing and unexpected keys."""
        if strict and set(state_dict) != set(self.state_dict()):
            check_adapter_keys(state_dict, self.trained_keys(), "state_dict")
            return super().load_state_dict(state_dict, strict=False, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = self.trained_keys()
        checkpoint["state_dict"] = {
            name: value for name, value in checkpoint["state_dict"].items() if name in keys
        }
        checkpoint["lightning_rec_config"] = self.config_tree()
        if self.vocab is not None:
            checkpoint["lightning_rec_vocab"] = self.vocab

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.vocab = checkpoint.get("lightning_rec_vocab", self.vocab)

    def hub_tensors(self) -> dict[str, Tensor]:
        """The trained tensors as saved on the Hub, keyed relative to the base model (PEFT's naming for
        ``lora``). They share memory with the live weights, so copying into them loads a checkpoint."""
        if self.method == "lora":
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.model, save_embedding_layers=False)
            return {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in state.items()}
        tensors = {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}
        if self.method != "smoa":
            return tensors
        # The adapter as save_smoa writes it: PEFT's keys, without the adapter name.
        adapter = set(smoa_state_dict(self.model))
        return {k: v for k, v in tensors.items() if k not in adapter} | smoa_state_dict(self.model, "default")

    # ------------------------------------------------------------------ hub
    def _save_pretrained(self, save_directory: Path) -> None:
        (save_directory / CONFIG_FILE).write_text(json.dumps(self.config_tree(), indent=2))
        if self.vocab is not None:
            (save_directory / VOCAB_FILE).write_text(json.dumps(self.vocab))
        task_type = "SEQ_CLS" if self.task == "classification" else "CAUSAL_LM"
        if self.method == "smoa":
            save_smoa(
                self.model,
                save_directory,
                modules_to_save=self.head_names(),
                task_type=task_type,
                base_model_name_or_path=self.base_model,
            )
        elif self.method == "lora":
            config = self.model.peft_config["default"].to_dict()
            config = {
                key: sorted(value) if isinstance(value, set) else value for key, value in config.items()
            }
            write_peft_adapter(
                save_directory, {**config, "base_model_name_or_path": self.base_model}, self.hub_tensors()
            )
        else:
            tensors = {name: value.contiguous() for name, value in self.hub_tensors().items()}
            save_file(tensors, str(save_directory / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str = "cpu",
    ) -> T:
        """Rebuild the model from ``config.json`` (the base from its name) and load the trained tensors
        with a strict key check. Returns it in eval mode."""
        source = str(pretrained_model_name_or_path)
        files = [
            CONFIG_FILE,
            VOCAB_FILE,
            ADAPTER_CONFIG_FILE,
            ADAPTER_WEIGHTS_FILE,
            WEIGHTS_FILE,
            "README.md",
        ]
        folder = (
            Path(source)
            if os.path.isdir(source)
            else Path(
                snapshot_download(
                    repo_id=source,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                    allow_patterns=files,
                )
            )
        )
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{source}: no {CONFIG_FILE} to rebuild the model from")
        model = instantiate_tree(read_json(folder / CONFIG_FILE, source), expected=cls)
        if model.method in ("smoa", "lora"):
            _, tensors = read_peft_adapter(folder)
        elif (folder / WEIGHTS_FILE).is_file():
            tensors = load_file(str(folder / WEIGHTS_FILE))
        else:
            raise FileNotFoundError(f"{source}: no {WEIGHTS_FILE}; weights load from safetensors only")
        model.load_hub_tensors(tensors, source)
        if (folder / VOCAB_FILE).is_file():
            model.vocab = check_vocab(read_json(folder / VOCAB_FILE, source), source)
        return model.to(device).eval()

    @torch.no_grad()
    def load_hub_tensors(self, tensors: dict[str, Tensor], source: str = "tensors") -> None:
        """Copy ``tensors`` (keyed as :meth:`hub_tensors`) into the model; keys must match exactly."""
        live = self.hub_tensors()
        check_adapter_keys(tensors, set(live), source)
        for key, value in tensors.items():
            if value.shape != live[key].shape:
                raise RuntimeError(
                    f"{source}: {key} has shape {tuple(value.shape)}, the model {tuple(live[key].shape)}"
                )
            live[key].copy_(value)

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The SMoA-family card: base model, method, trained parameters and this run's test figures."""
        results = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(self.test_results.items()))
        return render_model_card(
            "smoa",
            config=self.config_tree(),
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            base_model=self.base_model,
            base_model_text=self.base_model or "a randomly initialised model (model_config)",
            method=self.method,
            task=self.task,
            trained_parameters=f"{sum(p.numel() for p in self.parameters() if p.requires_grad):,}",
            adapter_results=f"| metric | value |\n|---|---|\n{results}" if results else "No test was run.",
        )

    @classmethod
    def hub_example(cls) -> tuple[AdapterFineTune, tuple[Tensor, Tensor]]:
        """A tiny random BERT classifier with a trained head, and token ids and mask ``(2 6)``.

        It uses ``method="frozen"`` because the registry's round trip checks ``model.safetensors``; the
        adapter layouts (PEFT's) are round-tripped in tests/modules/test_adapter_finetune.py."""
        model = cls(
            model_config={
                "model_type": "bert",
                "hidden_size": 16,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "max_position_embeddings": 32,
            },
            tokenizer=MINILM_HUB_ID,
            num_labels=3,
            method="frozen",
        )
        with torch.no_grad():
            model.model.classifier.weight.normal_()
        input_ids = torch.randint(1000, 2000, (2, 6))
        return model, (input_ids, torch.ones_like(input_ids))
