"""Layer 2: LightningDataModules built on :mod:`lightning_rec.data`."""

from lightning_rec.datamodules.sequential import ItemTable, SequentialRecDataModule

__all__ = ["ItemTable", "SequentialRecDataModule"]
