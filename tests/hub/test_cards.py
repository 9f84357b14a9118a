"""A model card rendered from a real test run carries that run's metrics as Hub eval results."""

import lightning as L
import torch
from huggingface_hub import ModelCard

from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import SASRec


def test_card_front_matter_holds_the_test_metrics_and_reads_back(tmp_path, data_cache):
    torch.manual_seed(0)
    source = SyntheticReviews(num_users=120, num_items=80, num_categories=6, cache_dir=data_cache)
    data = SequentialRecDataModule(source=source, cache_dir=data_cache, max_len=10, batch_size=32)
    model = SASRec(encoder=SASRecEncoder(num_items=data.num_items, hidden_size=16, max_len=10), ks=(5, 10))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    logged = trainer.test(model, data, verbose=False)[0]

    model.save_pretrained(tmp_path, model_card_kwargs={"repo_id": "org/sasrec-synthetic"})
    card = ModelCard.load(tmp_path / "README.md")
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results.keys() == logged.keys()
    for name, value in logged.items():
        assert abs(results[name] - value) < 1e-6
    assert {r.dataset_name for r in card.data.eval_results} == {"SyntheticReviews"}
    assert card.data.library_name == "lightning-rec"
    assert "arXiv:1808.09781" in card.text and "org/sasrec-synthetic" in card.text

    # The same card, saved and read back, gives the same eval results.
    card.save(tmp_path / "again.md")
    assert ModelCard.load(tmp_path / "again.md").data.eval_results == card.data.eval_results
    # vocab.json travelled with the model: raw item ids in, raw item ids out.
    loaded = SASRec.from_pretrained(tmp_path)
    history = [data.data.item_ids[i] for i in data.data.items[:5]]
    recommended = loaded.recommend_items(history, k=5)
    assert len(recommended) == 5 and set(recommended) <= set(data.data.item_ids[1:])
    assert not set(recommended) & set(history)
