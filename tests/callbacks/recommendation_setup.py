"""The tiny model and data that test_recommendation_writer.py and its DDP script both predict with."""

import torch

from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import SASRec


def build(cache_dir: str, **data_options) -> tuple[SASRec, SequentialRecDataModule]:
    """An untrained SASRec (seed 0: the same weights in every process) over 71 synthetic users."""
    source = SyntheticReviews(num_users=71, num_items=40, num_categories=4, cache_dir=cache_dir)
    data = SequentialRecDataModule(
        source=source, cache_dir=cache_dir, max_len=8, eval_batch_size=8, **data_options
    )
    torch.manual_seed(0)
    return SASRec(encoder=SASRecEncoder(num_items=data.num_items, hidden_size=8, max_len=8)), data
