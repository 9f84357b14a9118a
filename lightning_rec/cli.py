"""``lightning-rec``: the LightningCLI entry point (layer 4).

``lightning-rec fit|validate|test|predict --config configs/<method>/<data>.yaml`` is plain
LightningCLI in subclass mode: every module, datamodule, encoder and data reader of the package is
selectable by its short name (``--model SASRec --model.encoder GRU4Rec``,
``--data.source MovieLens``), because importing this file registers them.

``lightning-rec predict --config <yaml> --ckpt_path best.ckpt`` writes ``predictions.jsonl``: one line
per user, ``{"user_id": ..., "items": [...], "scores": [...]}`` in raw ids (see
:class:`~lightning_rec.callbacks.RecommendationWriter`; options ``--recommend.k``,
``--recommend.exclude_history``, ``--recommend.output_path`` and ``--data.init_args.predict_users``).

``lightning-rec push --ckpt_path <ckpt> --repo_id org/name [--config <yaml>]`` publishes a checkpoint
(see :func:`push_checkpoint`); it is the one subcommand Lightning has no equivalent of.

The catalogue size is not typed in YAML: ``data.num_items`` (known after preprocessing) is linked
into ``model.init_args.encoder.init_args.num_items`` when the classes are instantiated.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning_utilities.core import rank_zero as lightning_rank_zero

import lightning_rec.blocks
import lightning_rec.data
import lightning_rec.datamodules
import lightning_rec.modules  # noqa: F401
from lightning_rec.callbacks import ExactResume, RecommendationWriter
from lightning_rec.hub.config_tree import instantiate_tree
from lightning_rec.hub.mixin import HubMixin

__all__ = ["LightningRecCLI", "main", "push_checkpoint", "run_cli"]


class LightningRecCLI(LightningCLI):
    """LightningCLI with the links every sequential-recommendation config needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Every run saves its random generators' states, so `fit --ckpt_path last.ckpt` resumes exactly.
        parser.add_lightning_class_args(ExactResume, "exact_resume")
        # `predict` writes each user's top-K raw item ids: --recommend.k, --recommend.exclude_history,
        # --recommend.output_path (the users: --data.init_args.predict_users). Idle in other subcommands.
        parser.add_lightning_class_args(RecommendationWriter, "recommend")
        parser.link_arguments(
            "data.num_items", "model.init_args.encoder.init_args.num_items", apply_on="instantiate"
        )

    def predict(self, **kwargs: Any) -> None:
        """``lightning-rec predict``: the recommendations stream to the writer's file, none kept in memory."""
        self.trainer.predict(**{**kwargs, "return_predictions": False})


def run_cli(args: list[str] | None = None) -> LightningRecCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``) and return it (trainer, model, datamodule)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _quiet_lightning_notices()
    return LightningRecCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def _quiet_lightning_notices() -> None:
    """Drop the three notices Lightning prints on every run that a lightning-rec user cannot act on,
    each matched by its exact text so that every other warning still shows."""
    # An advertisement for Lightning's cloud logger, logged through the logger all of Lightning's
    # rank-zero messages use (added once: the same filter function).
    lightning_rank_zero.log.addFilter(_not_the_litlogger_tip)
    # Without TensorBoard installed, Lightning logs to CSV files (our default: TensorBoard is optional)
    # and explains its v1.9 packaging history at length.
    warnings.filterwarnings("ignore", message="Starting from v1.9.0, `tensorboardX` has been removed")
    # torch deprecates a check that Lightning's own pytree code makes on every batch.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def _not_the_litlogger_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip: For seamless cloud logging")


def push_checkpoint(
    ckpt_path: str,
    repo_id: str,
    config: str | None = None,
    token: str | None = None,
    private: bool = False,
    overrides: list[str] | None = None,
) -> str:
    """Convert a Lightning checkpoint into a Hub folder and upload it to ``repo_id`` as one commit.

    With ``config`` (the run's YAML, plus the ``overrides`` the run used, e.g. ``--data.max_len 20``),
    the checkpoint is first tested with ``lightning-rec test`` so the model card carries that test's
    metrics. The checkpoint is read with
    ``torch.load(weights_only=True)`` (so it unpickles nothing but tensors and plain containers), its
    ``lightning_rec_config`` builds only allowlisted ``nn.Module`` classes, and it is never uploaded
    itself: only ``config.json``, ``model.safetensors``, ``vocab.json`` and ``README.md`` are.
    """
    if config is not None:
        arguments = ["test", "--config", config, *(overrides or []), "--ckpt_path", ckpt_path]
        model = run_cli([*arguments, "--weights_only", "true", "--trainer.logger", "false"]).model
    else:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if "lightning_rec_config" not in checkpoint:
            raise ValueError(f"{ckpt_path}: not a lightning-rec checkpoint (no 'lightning_rec_config' entry)")
        model = instantiate_tree(checkpoint["lightning_rec_config"], expected=HubMixin)
        model.load_state_dict(checkpoint["state_dict"], strict=True)
        model.on_load_checkpoint(checkpoint)
    return str(model.push_to_hub(repo_id, token=token, private=private))


def _push_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="lightning-rec push", description=push_checkpoint.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--ckpt_path", required=True, help="the Lightning checkpoint (.ckpt) to publish")
    parser.add_argument("--repo_id", required=True, help="the Hub repo, e.g. org/sasrec-ml100k")
    parser.add_argument("--config", help="the run's YAML: test the checkpoint first, for the card's metrics")
    parser.add_argument("--token", help="Hub token (default: the one saved by `hf auth login`)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.epilog = "Other arguments are passed to the test run of --config (e.g. --data.max_len 20)."
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.config is None:
        parser.error(f"unrecognized arguments: {' '.join(overrides)} (training overrides need --config)")
    url = push_checkpoint(args.ckpt_path, args.repo_id, args.config, args.token, args.private, overrides)
    print(f"pushed {args.ckpt_path} to {args.repo_id}: {url}")


def main(argv: list[str] | None = None) -> None:
    """The ``lightning-rec`` console script: LightningCLI's subcommands, plus ``push``."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["push"]:
        _push_main(arguments[1:])
    else:
        run_cli(argv)  # None: LightningCLI reads sys.argv itself (given explicitly, it warns)


if __name__ == "__main__":
    main()
