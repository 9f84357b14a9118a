import lightning as L
import numpy as np
import pytest
import torch

from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.batches import EvalBatch, TrainBatch
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import SASRec


@pytest.fixture
def data(data_cache) -> SequentialRecDataModule:
    source = SyntheticReviews(
        num_users=150, num_items=100, num_categories=5, mean_length=40, cache_dir=data_cache
    )
    return SequentialRecDataModule(
        source=source, cache_dir=data_cache, max_len=10, batch_size=16, eval_batch_size=32
    )


def test_training_batches_cover_every_training_pair_once_per_epoch(data):
    batches = list(data.train_dataloader())
    assert all(isinstance(b, TrainBatch) and b.input_ids.shape[1] == 10 for b in batches)
    supervised = sum(int((b.target_ids > 0).sum()) for b in batches)
    lengths = data.data.train_end - data.data.offsets[:-1]
    assert supervised == int(np.maximum(lengths - 1, 0).sum())
    # Long sequences were windowed (mean length 40 > max_len 10): more windows than users.
    assert sum(len(b) for b in batches) > data.num_users


def test_eval_batches_hold_one_target_per_user_with_its_history(data):
    batch = next(iter(data.test_dataloader()))
    assert isinstance(batch, EvalBatch)
    d = data.data
    for row in range(len(batch)):
        user = int(batch.user_index[row])
        sequence = d.items[d.offsets[user] : d.offsets[user + 1]]
        assert int(batch.target[row]) == sequence[-1]
        history = batch.history[row][batch.history[row] > 0].numpy()
        assert np.array_equal(history, sequence[:-1])
        recent = batch.input_ids[row][batch.input_ids[row] > 0].numpy()
        assert np.array_equal(recent, sequence[:-1][-10:])


def test_item_table_and_popularity(data):
    table = data.item_table
    assert len(table.title) == len(table.category) == len(table.price) == data.num_items + 1
    catalogue = data.source.catalogue
    raw = data.data.item_ids[5]
    assert table.title[5] == catalogue.item_title(int(raw[1:]))
    assert table.price[5].item() == pytest.approx(catalogue.item_meta(int(raw[1:])).price)
    d = data.data
    expected = np.zeros(data.num_items + 1)
    for u in range(d.num_users):
        for item in d.items[d.offsets[u] + 1 : d.train_end[u]]:
            expected[item] += 1
    assert np.array_equal(data.item_popularity().numpy(), expected)


def test_id_maps_travel_with_the_checkpoint_and_are_checked(data, data_cache, tmp_path):
    model = SASRec(encoder=SASRecEncoder(num_items=data.num_items, hidden_size=8, max_len=10))
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    trainer.fit(model, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)  # our own file, written just above
    assert checkpoint["SequentialRecDataModule"]["item_ids"] == data.data.item_ids

    other = SequentialRecDataModule(
        source=SyntheticReviews(num_users=150, num_items=100, num_categories=5, mean_length=40, seed=9,
                                cache_dir=data_cache),
        cache_dir=data_cache, max_len=10,
    )  # fmt: skip
    other.load_state_dict(checkpoint["SequentialRecDataModule"])
    with pytest.raises(ValueError, match="item_ids"):
        other.num_items  # noqa: B018
    same = SequentialRecDataModule(source=data.source, cache_dir=data_cache, max_len=10)
    same.load_state_dict(checkpoint["SequentialRecDataModule"])
    assert same.num_items == data.num_items


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="max_len"):
        SequentialRecDataModule(max_len=0)
    with pytest.raises(ValueError, match="split"):
        SequentialRecDataModule(split="random")
