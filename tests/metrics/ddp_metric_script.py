"""FullRankingMetrics under Lightning DDP on 2 CPU processes; rank 0 writes the result as JSON.

Not a test module. ``tests/metrics/test_ranking.py`` runs ``python ddp_metric_script.py OUT_JSON``
and compares the JSON with the single-process metric on :func:`make_data`. It has to be a script:
``strategy="ddp"`` starts the second process by running ``sys.argv`` again.
"""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_rec.metrics import FullRankingMetrics

NUM_PROCESSES = 2
BATCH_SIZE = 8
# Divisible by NUM_PROCESSES * BATCH_SIZE, so the DistributedSampler pads nothing: padding would
# repeat queries and make the DDP result differ from the single-process one by design.
NUM_QUERIES = 64
NUM_ITEMS = 40
HIDDEN_SIZE = 8
HISTORY_LENGTH = 5
KS = (1, 5, 10)
ITEM_CHUNK_SIZE = 7  # does not divide NUM_ITEMS


def make_data(seed: int = 0) -> dict[str, Tensor]:
    """Fixed queries, catalogue, targets and histories (0 = padding), from one seed."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(NUM_QUERIES, HIDDEN_SIZE, generator=generator),
        "item_embeddings": torch.randn(NUM_ITEMS, HIDDEN_SIZE, generator=generator),
        "target": torch.randint(1, NUM_ITEMS, (NUM_QUERIES,), generator=generator),
        "history": torch.randint(0, NUM_ITEMS, (NUM_QUERIES, HISTORY_LENGTH), generator=generator),
    }


class RankingProbe(L.LightningModule):
    """Feeds each test batch to a dense-score metric and to a chunked-embedding metric."""

    def __init__(self, item_embeddings: Tensor) -> None:
        super().__init__()
        self.register_buffer("item_embeddings", item_embeddings)
        self.dense = FullRankingMetrics(ks=KS, mask_history=True)
        self.chunked = FullRankingMetrics(ks=KS, mask_history=True, item_chunk_size=ITEM_CHUNK_SIZE)
        self.results: dict = {}

    def test_step(self, batch: list[Tensor], batch_idx: int) -> None:
        query, target, history = batch
        self.dense.update(query @ self.item_embeddings.T, target, history)
        self.chunked.update_from_embeddings(query, self.item_embeddings, target, history)

    def on_test_epoch_end(self) -> None:
        # Gathered before compute(): the per-process counts show that the queries were split.
        local_counts = self.all_gather(self.dense.count.clone())
        with self.dense.sync_context():
            synced_count = int(self.dense.count)
        self.results = {
            "world_size": self.trainer.world_size,
            "local_counts": [int(count) for count in local_counts.reshape(-1)],
            "synced_count": synced_count,
            **{
                name: {key: float(value) for key, value in metric.compute().items()}
                for name, metric in (("dense", self.dense), ("chunked", self.chunked))
            },
        }


def main(out_json: str) -> None:
    torch.set_num_threads(1)
    data = make_data()
    dataset = TensorDataset(data["query"], data["target"], data["history"])
    probe = RankingProbe(data["item_embeddings"])
    trainer = L.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=NUM_PROCESSES,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(probe, dataloaders=DataLoader(dataset, batch_size=BATCH_SIZE))
    if trainer.is_global_zero:
        with open(out_json, "w") as out:
            json.dump(probe.results, out)
    # Leave the process group before exiting: gloo's threads can otherwise abort the interpreter's
    # shutdown ("terminate called without an active exception", exit code -6).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
