"""Layer 1: reusable nn.Modules. No Lightning, no I/O, no data formats."""

from lightning_rec.blocks.diffusion import DiffusionHead, DiffusionSample
from lightning_rec.blocks.sequence import (
    HSTU,
    SEQUENCE_ENCODERS,
    BERT4Rec,
    GRU4Rec,
    SASRec,
    SequenceEncoder,
)
from lightning_rec.blocks.thinking import ThinkingTokenEncoder

__all__ = [
    "HSTU",
    "SEQUENCE_ENCODERS",
    "BERT4Rec",
    "DiffusionHead",
    "DiffusionSample",
    "GRU4Rec",
    "SASRec",
    "SequenceEncoder",
    "ThinkingTokenEncoder",
]
