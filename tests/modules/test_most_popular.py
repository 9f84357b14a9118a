import lightning as L
import torch

from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import MostPopular


def test_fit_counts_next_items_and_test_ranks_by_popularity(data_cache):
    source = SyntheticReviews(num_users=200, num_items=120, num_categories=6, cache_dir=data_cache)
    data = SequentialRecDataModule(source=source, cache_dir=data_cache, batch_size=32)
    model = MostPopular(num_items=data.num_items, ks=(10,))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, data)
    torch.testing.assert_close(model.counts, data.item_popularity())
    result = trainer.test(model, data, verbose=False)[0]

    # Brute force: rank = other items at least as popular as the target.
    counts = data.item_popularity()
    hits = ndcg = 0.0
    targets = data.data.items[data.data.test_positions]
    for target in targets.tolist():
        rank = int((counts[1:] >= counts[target]).sum()) - 1
        hits += rank < 10
        ndcg += (1 / torch.log2(torch.tensor(rank + 2.0))).item() if rank < 10 else 0.0
    assert result["test/recall@10"] == torch.tensor(hits / len(targets)).item()
    assert abs(result["test/ndcg@10"] - ndcg / len(targets)) < 1e-6
