"""A text corpus rendered from the synthetic catalogue, and the BPE tokenizer trained on it.

No pretrained language model can be downloaded here, so the project pretrains its own small causal
LM on text about the catalogue (:mod:`lightning_rec.modules.causal_lm`). The corpus holds three
kinds of documents:

- **items**: ``"Item: <title>. Category: <category>. Brand: <brand>. <description>"``, one per item;
- **histories**: a user's consecutive interactions as a title list followed by the next title,
  ``"History: <t1>; <t2>; ...; <tn>.\\nNext: <title>."``, the format of the candidate-ranking prompts;
- **rationales**, appended to each history from the generator's ground truth:
  ``"Why: recently into <category>, likes <colour>; <title> fits."``. ``<category>`` is the category
  whose centroid is closest (largest inner product) to the intent that generated the next item, and
  ``<colour>`` is the most frequent colour among the history's items of that category (of the whole
  history when it has none). Colour does not drive choices in the generator; it is the stated taste,
  read off the history, that the rationale quotes.

Users are split into train, validation and test users (a seeded permutation); item documents are all
in train (facts about items are not held out, the behaviour of unseen users is). Held-out perplexity
is measured on the validation and test users' history documents. A training user's histories stop
before their last :data:`HELD_OUT_INTERACTIONS` interactions: those are the leave-one-out validation
and test items of the sequential protocol (:class:`~lightning_rec.datamodules.SequentialRecDataModule`
on the same catalogue), so a method that ranks them with this LM has not read them in pretraining.
(When k-core filtering drops one of a user's last items, the protocol holds out earlier ones; the
default catalogue loses almost none.)

Axes: u users, i items, c categories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lightning_rec.data.synthetic import _COLOURS, SyntheticCatalogue

__all__ = [
    "EOS_TOKEN",
    "HELD_OUT_INTERACTIONS",
    "PAD_TOKEN",
    "CatalogueCorpus",
    "CausalLMBatch",
    "candidate_rationale",
    "collate_blocks",
    "history_prompt",
    "intent_summary",
    "next_title",
    "pack_token_blocks",
    "rationale_prompt",
    "render_catalogue_corpus",
    "train_bpe_tokenizer",
]

#: a training user's last interactions, left out of the corpus (the leave-one-out valid and test items).
HELD_OUT_INTERACTIONS = 2
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class CatalogueCorpus:
    """Documents of the three splits (lists of strings, no end-of-text marker) and their users
    (0-based catalogue user indices, sorted)."""

    train: list[str]
    valid: list[str]
    test: list[str]
    train_users: list[int]
    valid_users: list[int]
    test_users: list[int]


def render_catalogue_corpus(
    catalogue: SyntheticCatalogue,
    max_history: int = 10,
    heldout_fraction: float = 0.1,
    seed: int = 0,
) -> CatalogueCorpus:
    """Render ``catalogue`` as documents (see the module docstring) and split them by user.

    Args:
        catalogue: the generator (its ground-truth intents write the rationales).
        max_history: titles per history document; each user's sequence is cut into consecutive,
            non-overlapping windows of ``max_history + 1`` items (the last one is "Next").
        heldout_fraction: share of users in validation, and again in test.
        seed: seed of the user permutation.
    """
    if not 0.0 < heldout_fraction < 0.5:
        raise ValueError(f"heldout_fraction must be in (0, 0.5), got {heldout_fraction}")
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    users = np.random.default_rng(seed).permutation(catalogue.num_users)
    heldout = max(1, round(heldout_fraction * catalogue.num_users))
    if 2 * heldout >= catalogue.num_users:
        raise ValueError(
            f"{catalogue.num_users} users leave no training user after two held-out shares of {heldout}"
        )
    valid_users, test_users = sorted(users[:heldout].tolist()), sorted(users[heldout : 2 * heldout].tolist())
    train_users = sorted(users[2 * heldout :].tolist())
    items = [_item_document(catalogue, item) for item in range(catalogue.num_items)]
    return CatalogueCorpus(
        train=items + _history_documents(catalogue, train_users, max_history, HELD_OUT_INTERACTIONS),
        valid=_history_documents(catalogue, valid_users, max_history, 0),
        test=_history_documents(catalogue, test_users, max_history, 0),
        train_users=train_users,
        valid_users=valid_users,
        test_users=test_users,
    )


def _item_document(catalogue: SyntheticCatalogue, item: int) -> str:
    meta = catalogue.item_meta(item)
    return f"Item: {meta.title}. Category: {meta.categories[-1]}. Brand: {meta.brand}. {meta.description}"


def _history_documents(
    catalogue: SyntheticCatalogue, users: Iterable[int], max_history: int, drop_last: int
) -> list[str]:
    documents = []
    for user in users:
        record = catalogue.users[user]
        length = len(record.items) - drop_last
        for start in range(0, length - 1, max_history + 1):
            window = record.items[start : min(start + max_history + 1, length)]
            if len(window) < 2:
                continue
            history, target = window[:-1].tolist(), int(window[-1])
            intent = record.intents[record.intent_path[start + len(window) - 1]]
            documents.append(_history_document(catalogue, history, target, intent))
    return documents


def _history_document(
    catalogue: SyntheticCatalogue, history: list[int], target: int, intent: np.ndarray
) -> str:
    category, colour = intent_summary(catalogue, history, intent)
    title = catalogue.item_title(target)
    return (
        f"{history_prompt([catalogue.item_title(item) for item in history])}{next_title(title)}\n"
        f"Why: recently into {category}, likes {colour}; {title} fits."
    )


def intent_summary(
    catalogue: SyntheticCatalogue, history: Sequence[int], intent: np.ndarray
) -> tuple[str, str]:
    """The ground truth a rationale states: the name of the category whose centroid is closest to
    ``intent`` (largest inner product), and the most frequent colour among the ``history``'s items (0-based
    catalogue indices) of that category (of the whole history when it has none)."""
    category = int(np.argmax(catalogue.category_centroids @ intent))
    in_category = [item for item in history if catalogue.item_category[item] == category] or list(history)
    # Counter.most_common keeps first-seen order among ties, so the rule is deterministic.
    colour = Counter(int(catalogue.item_colour[item]) for item in in_category).most_common(1)[0][0]
    return catalogue.category_name(category), _COLOURS[colour]


def candidate_rationale(
    catalogue: SyntheticCatalogue, history: Sequence[int], intent: np.ndarray, candidate: int
) -> str:
    """The catalogue's teacher rationale for one (user, candidate) pair, the continuation of
    :func:`rationale_prompt`: ``" recently into <category>, likes <colour>; <title> fits."`` (the
    corpus's rationale) when the candidate is of the intent's category, ``"... <title> does not fit."``
    otherwise. A user-item judgement that follows from the stated intent (Reasoning to Rank's
    per-candidate reasoning), not from knowing which candidate was chosen."""
    category, colour = intent_summary(catalogue, history, intent)
    fits = catalogue.category_name(int(catalogue.item_category[candidate])) == category
    title = catalogue.item_title(candidate)
    return f" recently into {category}, likes {colour}; {title} {'fits' if fits else 'does not fit'}."


def rationale_prompt(history_titles: Sequence[str], candidate_title: str) -> str:
    """``"History: ...\nNext: <candidate>.\nWhy:"``: the corpus format up to a rationale about one
    candidate (:func:`candidate_rationale` continues it)."""
    return f"{history_prompt(history_titles)}{next_title(candidate_title)}\nWhy:"


def history_prompt(titles: Sequence[str]) -> str:
    """``"History: <t1>; ...; <tn>.\nNext:"``: a history (oldest first) as the corpus writes it, up to
    the point where the next title follows; score candidates as continuations :func:`next_title`."""
    return f"History: {'; '.join(titles)}.\nNext:"


def next_title(title: str) -> str:
    """``" <title>."``: the continuation of :func:`history_prompt` that names the next item."""
    return f" {title}."


def train_bpe_tokenizer(documents: Sequence[str], vocab_size: int = 1024, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (GPT-2 / Qwen2 style) on ``documents``.

    Returns a ``transformers.PreTrainedTokenizerFast`` with ``<|endoftext|>`` as end-of-sequence
    token and a separate ``<|pad|>`` (so padding never hides a real end of text), no BOS (as Qwen2),
    and no chat template: the catalogue LM is pretrained on plain text. Byte-level means no input is
    ever out of vocabulary; training is deterministic for a fixed ``documents`` list.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left"
    )


@dataclass
class CausalLMBatch:
    """Token blocks for next-token training: ``input_ids (b n)``, ``attention_mask (b n)`` (0 on
    padding) and ``labels (b n)`` (the input ids, ``-100`` on padding; the model shifts them)."""

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pack_token_blocks(documents: Sequence[Sequence[int]], eos_token_id: int, block_size: int) -> np.ndarray:
    """Concatenate tokenized documents, each followed by ``eos_token_id``, and cut into blocks.

    Packing (GPT-2's recipe) wastes no compute on padding; a block may start mid-document, and the
    model attends across the end-of-text marker, as in GPT-2 pretraining. Returns int64
    ``(blocks, block_size)``; the last block is right-padded with ``-1`` (see :meth:`collate_blocks`).
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2 (one input, one target), got {block_size}")
    stream = np.fromiter(
        (token for document in documents for token in (*document, eos_token_id)), dtype=np.int64
    )
    blocks = np.full((-(-len(stream) // block_size), block_size), -1, dtype=np.int64)
    blocks.reshape(-1)[: len(stream)] = stream
    return blocks


def collate_blocks(blocks: Sequence[Tensor], pad_token_id: int) -> CausalLMBatch:
    """Stack rows of :func:`pack_token_blocks` (``-1`` marks padding) into a :class:`CausalLMBatch`."""
    stacked = torch.stack(list(blocks))
    real = stacked >= 0
    return CausalLMBatch(
        input_ids=torch.where(real, stacked, pad_token_id),
        attention_mask=real.long(),
        labels=torch.where(real, stacked, -100),
    )
