"""Item text embeddings through MiniLM, cached on disk by their inputs."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import lightning_rec.data.item_embeddings as item_embeddings_module
from lightning_rec.blocks import EmbeddingAspectEvidence
from lightning_rec.data.item_embeddings import item_text_embeddings
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained

TEXTS = ["Acme Classic Black Bamboo Teapot", "Globex Pro Red Steel Headphones", "Hooli Eco Blue Wool Scarf"]


def test_embeddings_match_the_judge_recipe_and_come_from_the_cache_the_second_time(tmp_path, monkeypatch):
    embeddings = item_text_embeddings(TEXTS, cache_dir=tmp_path, batch_size=2)
    assert embeddings.shape == (3, 384)
    # The same sentence-transformers recipe as the judge's embedding evidence, on the same encoder.
    path = resolve_pretrained(MINILM_HUB_ID)
    evidence = EmbeddingAspectEvidence(
        AutoModel.from_pretrained(path, use_safetensors=True), AutoTokenizer.from_pretrained(path)
    )
    assert torch.allclose(embeddings, evidence.embed(TEXTS), atol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the inputs are cached")

    monkeypatch.setattr(item_embeddings_module, "_encode", no_encoder)
    assert torch.equal(item_text_embeddings(TEXTS, cache_dir=tmp_path), embeddings)
    # Another text (or order) is another key: it is not answered from the cache.
    with pytest.raises(AssertionError, match="encoder ran"):
        item_text_embeddings(TEXTS[::-1], cache_dir=tmp_path)
