"""``lightning-rec``: the LightningCLI entry point (layer 4).

``lightning-rec fit|validate|test|predict --config configs/<method>/<data>.yaml`` is plain
LightningCLI in subclass mode: every module, datamodule, encoder and data reader of the package is
selectable by its short name (``--model SASRec --model.encoder GRU4Rec``,
``--data.source MovieLens``), because importing this file registers them.

The catalogue size is not typed in YAML: ``data.num_items`` (known after preprocessing) is linked
into ``model.init_args.encoder.init_args.num_items`` when the classes are instantiated.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import lightning_rec.blocks
import lightning_rec.data
import lightning_rec.datamodules
import lightning_rec.modules  # noqa: F401

__all__ = ["LightningRecCLI", "main", "run_cli"]


class LightningRecCLI(LightningCLI):
    """LightningCLI with the links every sequential-recommendation config needs."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.num_items", "model.init_args.encoder.init_args.num_items", apply_on="instantiate"
        )


def run_cli(args: list[str] | None = None) -> LightningRecCLI:
    """Run the CLI on ``args`` (default: ``sys.argv[1:]``) and return it (trainer, model, datamodule)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return LightningRecCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main() -> None:
    """The ``lightning-rec`` console script."""
    run_cli()


if __name__ == "__main__":
    main()
