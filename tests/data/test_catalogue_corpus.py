"""The catalogue corpus: user split, rationales from the ground truth, packing, the BPE tokenizer."""

from __future__ import annotations

import re

import numpy as np
import torch

from lightning_rec.data.catalogue_corpus import (
    collate_blocks,
    pack_token_blocks,
    render_catalogue_corpus,
    train_bpe_tokenizer,
)
from lightning_rec.data.synthetic import SyntheticCatalogue


def _catalogue() -> SyntheticCatalogue:
    return SyntheticCatalogue(num_users=60, num_items=40, num_categories=5, mean_length=10, seed=1)


def _windows(length: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of the consecutive windows of ``size`` items with at least 2 items (brute force)."""
    return [(a, min(a + size, length)) for a in range(0, length, size) if min(a + size, length) - a >= 2]


def test_documents_split_by_user_and_rationales_follow_the_intent():
    catalogue = _catalogue()
    corpus = render_catalogue_corpus(catalogue, max_history=4, heldout_fraction=0.1, seed=0)
    splits = (corpus.train_users, corpus.valid_users, corpus.test_users)
    assert sorted(u for users in splits for u in users) == list(range(catalogue.num_users))
    assert len(corpus.valid_users) == len(corpus.test_users) == 6
    assert len([d for d in corpus.train if d.startswith("Item: ")]) == catalogue.num_items
    # Training users lose their last two interactions (the sequential protocol's valid / test items).
    for documents, users, dropped in (
        (corpus.train, corpus.train_users, 2),
        (corpus.valid, corpus.valid_users, 0),
    ):
        history_documents = [d for d in documents if d.startswith("History: ")]
        expected = sum(len(_windows(len(catalogue.users[u].items) - dropped, 5)) for u in users)
        assert len(history_documents) == expected
    for user, documents, dropped in (
        (corpus.train_users[0], corpus.train, 2),
        (corpus.test_users[0], corpus.test, 0),
    ):
        record = catalogue.users[user]
        for start, stop in _windows(len(record.items) - dropped, 5):
            intent = record.intents[record.intent_path[stop - 1]]
            nearest = max(
                range(catalogue.num_categories), key=lambda c: float(catalogue.category_centroids[c] @ intent)
            )
            titles = [catalogue.item_title(int(item)) for item in record.items[start:stop]]
            prefix = f"History: {'; '.join(titles[:-1])}.\nNext: {titles[-1]}.\nWhy: "
            document = next(d for d in documents if d.startswith(prefix))
            why = re.search(r"Why: recently into (.+), likes (\w+); (.+) fits\.$", document)
            assert (
                why is not None
                and why.group(1) == catalogue.category_name(nearest)
                and why.group(3) == titles[-1]
            )
    assert render_catalogue_corpus(catalogue, max_history=4, heldout_fraction=0.1, seed=0) == corpus


def test_packing_keeps_every_token_in_order_and_collation_masks_padding():
    rng = np.random.default_rng(0)
    documents = [rng.integers(2, 50, size=rng.integers(1, 9)).tolist() for _ in range(13)]
    blocks = pack_token_blocks(documents, eos_token_id=0, block_size=7)
    stream = [token for document in documents for token in (*document, 0)]
    assert blocks.shape == (-(-len(stream) // 7), 7)
    assert (
        blocks.reshape(-1)[: len(stream)].tolist() == stream
        and (blocks.reshape(-1)[len(stream) :] == -1).all()
    )
    batch = collate_blocks(list(torch.from_numpy(blocks)), pad_token_id=1)
    real = torch.from_numpy(blocks >= 0)
    assert torch.equal(batch.attention_mask.bool(), real)
    assert torch.equal(batch.labels[real], batch.input_ids[real]) and (batch.labels[~real] == -100).all()
    assert (batch.input_ids[~real] == 1).all()


def test_the_tokenizer_round_trips_and_gives_each_catalogue_word_one_token():
    catalogue = _catalogue()
    corpus = render_catalogue_corpus(catalogue, max_history=4)
    tokenizer = train_bpe_tokenizer(corpus.train, vocab_size=600)
    text = corpus.valid[0]
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    title = " " + catalogue.item_title(3)  # inside a document every title word follows a space
    assert len(tokenizer(title)["input_ids"]) == len(title.split())
    assert tokenizer.decode(tokenizer("unseen ünïcode ✓")["input_ids"]) == "unseen ünïcode ✓"  # byte level
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
