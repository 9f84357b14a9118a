"""Layer 2: LightningDataModules built on :mod:`lightning_rec.data`."""

from lightning_rec.datamodules.candidates import CandidateBatch, CandidateRankingDataModule
from lightning_rec.datamodules.catalogue_corpus import CatalogueCorpusDataModule
from lightning_rec.datamodules.continual import ContinualStreamDataModule, EvalPoint, StreamBatch
from lightning_rec.datamodules.sequential import ItemTable, SequentialRecDataModule
from lightning_rec.datamodules.text_tasks import ClassificationBatch, InstructionBatch, TextTaskDataModule

__all__ = [
    "CandidateBatch",
    "CandidateRankingDataModule",
    "CatalogueCorpusDataModule",
    "ClassificationBatch",
    "ContinualStreamDataModule",
    "EvalPoint",
    "InstructionBatch",
    "ItemTable",
    "SequentialRecDataModule",
    "StreamBatch",
    "TextTaskDataModule",
]
