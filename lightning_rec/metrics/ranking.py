"""Full-ranking metrics for next-item recommendation: Recall@K (= HR@K), NDCG@K and MRR@K.

Every query has one held-out target item and is ranked against the whole catalogue. The protocol
(``shared/specs/data.md``) fixes three rules that every path here follows:

- Column / item 0 is the padding item. It never competes with the target.
- Ties count against the target by default (``ties="pessimistic"``): the 0-based rank is the number
  of *other* eligible items whose score is ``>=`` the target's score. A model that scores every item
  the same therefore ranks its target last, not first. Libraries that rank with ``torch.topk``
  (RecBole 1.2.1's full-sort evaluation) break ties arbitrarily, so on tied scores the pessimistic
  figure is a lower bound of theirs; ``ties="average"`` gives the expectation under random
  tie-breaking instead (the target equally likely at each position among the items it ties with),
  for comparisons with them. On distinct scores the two rules agree.
- Scores must be finite. A rank computed as "how many items score strictly higher" turns a NaN
  target score into rank 0, a hit: an encoder that returned NaN in eval mode once scored an NDCG@10
  six times what the model can reach. So a non-finite score in any column that takes part in the
  ranking raises ``ValueError``; columns that do not take part (padding, masked history) may hold
  anything, e.g. ``-inf`` put there by the model itself.

One rank function serves dense scores (:func:`target_ranks`), item embeddings scored chunk by
chunk (:func:`target_ranks_from_embeddings`), and the candidate-list metrics in
``candidates.py``. :func:`chunked_topk` gives the top-K items for serving, chunk by chunk too.

Axes:
    b  batch (queries)
    i  items of the catalogue, padding item 0 included
    c  columns of one block: a chunk of the catalogue, or a candidate list
    d  hidden size of query and item embeddings
    h  history length (0 = padding)
    k  cutoffs K
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

__all__ = ["FullRankingMetrics", "TieRule", "chunked_topk", "target_ranks", "target_ranks_from_embeddings"]

TieRule = Literal["pessimistic", "average"]
_TIE_RULES = ("pessimistic", "average")


def target_ranks(
    scores: Tensor, target: Tensor, history: Tensor | None = None, ties: TieRule = "pessimistic"
) -> Tensor:
    """0-based rank of each query's target among the catalogue.

    Args:
        scores: ``(b i)`` a score for every item; column 0 is the padding item and never competes.
        target: ``(b)`` long, the held-out item of each query, in ``[1, i)``.
        history: ``(b h)`` long or None, items the user has already seen (0 = padding). Given, the
            history's items are removed from the competition; the target keeps its place even if
            it is in the history.
        ties: ``"pessimistic"``: items scoring equal to the target rank before it; ``"average"``:
            the expected rank when ties are broken uniformly at random (half of them before it).

    Returns:
        ``(b)``: pessimistic, long, the number of other eligible items with a score ``>=`` the
        target's; average, float, the number scoring ``>`` plus half the number scoring ``==``.

    Raises:
        ValueError: on inconsistent shapes, ids outside the catalogue, or a non-finite score in the
            target's column or in any competing column (the message says how many rows).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (batch, items), got shape {tuple(scores.shape)}")
    _check_tie_rule(ties)
    _check_query_inputs(target, history, num_items=scores.shape[1], batch_size=len(scores))
    with torch.no_grad():
        competes = _competitor_mask(target, history, start=0, end=scores.shape[1])
        target_score = rearrange(scores.gather(1, rearrange(target, "b -> b 1")), "b 1 -> b")
        greater, tied, nonfinite = _count_outscoring(scores, target_score, competes)
        _raise_if_nonfinite(nonfinite | ~torch.isfinite(target_score))
        return _expected_rank(greater, tied, ties)


def target_ranks_from_embeddings(
    query: Tensor,
    item_embeddings: Tensor,
    target: Tensor,
    history: Tensor | None = None,
    item_chunk_size: int = 8192,
    ties: TieRule = "pessimistic",
) -> Tensor:
    """:func:`target_ranks` of ``query @ item_embeddings.T``, without materialising ``(b i)``.

    ``item_chunk_size`` items at a time, the chunk's items *and the targets* are scored by one matrix
    product, ``query @ [chunk; item_embeddings[target]].T``, and the competitors of the chunk are
    compared with the target's score from that same product. An item whose embedding equals the
    target's therefore always ties with it, whatever the chunk size (scored by two different kernels,
    e.g. a row-wise dot product for the target and a matmul for the competitors, the two would round
    differently and fall on either side at random). The extra ``b`` columns cost ``b / item_chunk_size``
    of the work. Peak memory is ``O(b * (item_chunk_size + b))``.

    The ranks equal those of the dense path whenever both round the scores alike: float matmul
    kernels may round a product differently for other matrix shapes, so two *distinct* items closer
    than the rounding error (about 1e-7 relative in float32) can swap order between chunk sizes or
    with the dense path. With exactly representable dot products (e.g. integer-valued embeddings) all
    paths agree bit for bit, ties included.

    Args:
        query: ``(b d)`` query embeddings (e.g. the sequence encoder's last position).
        item_embeddings: ``(i d)`` the catalogue, row 0 the padding item.
        target: ``(b)`` long, in ``[1, i)``.
        history: ``(b h)`` long or None, as in :func:`target_ranks`.
        item_chunk_size: rows of ``item_embeddings`` scored at a time.
        ties: as in :func:`target_ranks`.

    Returns:
        ``(b)`` ranks, long (pessimistic) or float (average).
    """
    _check_tie_rule(ties)
    greater, tied = _rank_counts_from_embeddings(query, item_embeddings, target, history, item_chunk_size)
    return _expected_rank(greater, tied, ties)


def chunked_topk(
    queries: Tensor,
    item_embeddings: Tensor,
    k: int,
    exclude: Tensor | None = None,
    item_chunk_size: int = 8192,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` items of ``queries @ item_embeddings.T`` without materialising ``(b i)``.

    A running top-``k`` is merged with each chunk's scores, so peak memory is
    ``O(b * (k + item_chunk_size))`` at any catalogue size. The padding item 0 and, per query, the
    items of ``exclude`` (e.g. the history) are never returned. Among equal scores the order is
    unspecified (``torch.topk``'s).

    Args:
        queries: ``(b d)``.
        item_embeddings: ``(i d)``, row 0 the padding item.
        k: items per query, ``1 <= k <= i - 1``.
        exclude: ``(b h)`` long or None, item ids not to recommend per query (0 = padding).
        item_chunk_size: rows of ``item_embeddings`` scored at a time.

    Returns:
        ``(b k)`` long item indices and ``(b k)`` their scores, best first. A query with fewer than
        ``k`` eligible items gets index 0 and score ``-inf`` in the remaining slots.
    """
    _check_embeddings(queries, item_embeddings, item_chunk_size)
    num_items = len(item_embeddings)
    if not 1 <= k <= num_items - 1:
        raise ValueError(f"k must lie in [1, {num_items - 1}] (the real items), got {k}")
    if exclude is not None:
        _check_history(exclude, num_items, len(queries), name="exclude")
    with torch.no_grad():
        top_scores = torch.full((len(queries), 0), float("-inf"), dtype=queries.dtype, device=queries.device)
        top_items = torch.zeros((len(queries), 0), dtype=torch.long, device=queries.device)
        # Chunks start at item 1: padding never takes part.
        for start in range(1, num_items, item_chunk_size):
            end = min(start + item_chunk_size, num_items)
            chunk_scores = queries @ item_embeddings[start:end].T  # (b c)
            if exclude is not None:
                chunk_scores = chunk_scores.masked_fill(_seen_mask(exclude, start, end), float("-inf"))
            chunk_items = torch.arange(start, end, device=queries.device).expand(len(queries), -1)
            merged_scores = torch.cat([top_scores, chunk_scores], dim=1)
            merged_items = torch.cat([top_items, chunk_items], dim=1)
            top_scores, position = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            top_items = merged_items.gather(1, position)
        return torch.where(torch.isneginf(top_scores), torch.zeros_like(top_items), top_items), top_scores


class FullRankingMetrics(Metric):
    """Recall@K, NDCG@K and MRR@K of a held-out target ranked against the full catalogue.

    With one held-out target per query, Recall@K equals HR@K (hit ratio): 1 if the target is in
    the top K. NDCG@K is ``1 / log2(rank + 2)`` if ``rank < K`` else 0 (the ideal DCG is 1), MRR@K
    is ``1 / (rank + 1)`` if ``rank < K`` else 0, with the 0-based ``rank`` of :func:`target_ranks`.
    All values are means over queries.

    Under ``ties="pessimistic"`` (the default) a target tied with other items takes the last of
    their positions: on tied scores the figures are a lower bound of what a ``torch.topk`` ranking
    (RecBole 1.2.1) reports. Under ``ties="average"`` each metric is its exact expectation when ties
    are broken uniformly at random: a target with ``g`` items above it and ``t`` tied ones is at each
    rank ``g .. g + t`` with probability ``1 / (t + 1)``, and the metric is averaged over those ranks
    (which is not the metric at the expected rank, since the metrics are not linear in the rank).

    States are sums (hits, NDCG, reciprocal ranks per K, and the query count) reduced with ``sum``
    across processes, so the result under DDP equals the single-process result on the same
    queries.

    Args:
        ks: the cutoffs K.
        mask_history: remove the items of each query's history from the competition. Off by
            default: the protocol ranks against every item but padding.
        item_chunk_size: items scored at a time by :meth:`update_from_embeddings`.
        ties: ``"pessimistic"`` or ``"average"``, see above.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        ks: Sequence[int] = (5, 10, 20),
        mask_history: bool = False,
        item_chunk_size: int = 8192,
        ties: TieRule = "pessimistic",
    ) -> None:
        super().__init__()
        self.ks = _check_cutoffs(ks)
        if item_chunk_size < 1:
            raise ValueError(f"item_chunk_size must be >= 1, got {item_chunk_size}")
        _check_tie_rule(ties)
        self.mask_history = mask_history
        self.item_chunk_size = item_chunk_size
        self.ties = ties
        num_cutoffs = len(self.ks)
        # Float: under ties="average" a query adds its probability of a hit.
        self.add_state("hits", torch.zeros(num_cutoffs), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", torch.zeros(num_cutoffs), dist_reduce_fx="sum")
        self.add_state("reciprocal_rank_sum", torch.zeros(num_cutoffs), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, target: Tensor, history: Tensor | None = None) -> None:
        """Add a batch of queries given their scores over the whole catalogue.

        Args:
            scores: ``(b i)``, column 0 the padding item.
            target: ``(b)`` long, in ``[1, i)``.
            history: ``(b h)`` long or None; used only when ``mask_history`` is on, so a module can
                always pass it and leave the choice to the metric's configuration.
        """
        if scores.dim() != 2:
            raise ValueError(f"scores must be (batch, items), got shape {tuple(scores.shape)}")
        history = self._history_to_mask(history)
        _check_query_inputs(target, history, num_items=scores.shape[1], batch_size=len(scores))
        with torch.no_grad():
            competes = _competitor_mask(target, history, start=0, end=scores.shape[1])
            target_score = rearrange(scores.gather(1, rearrange(target, "b -> b 1")), "b 1 -> b")
            greater, tied, nonfinite = _count_outscoring(scores, target_score, competes)
            _raise_if_nonfinite(nonfinite | ~torch.isfinite(target_score))
        self._add_rank_counts(greater, tied)

    def update_from_embeddings(
        self, query: Tensor, item_embeddings: Tensor, target: Tensor, history: Tensor | None = None
    ) -> None:
        """Add a batch of queries scored as ``query @ item_embeddings.T``, chunk by chunk over items.

        Args:
            query: ``(b d)``.
            item_embeddings: ``(i d)``, row 0 the padding item.
            target: ``(b)`` long, in ``[1, i)``.
            history: ``(b h)`` long or None, as in :meth:`update`.
        """
        greater, tied = _rank_counts_from_embeddings(
            query, item_embeddings, target, self._history_to_mask(history), self.item_chunk_size
        )
        # torchmetrics wraps only `update` with its bookkeeping (drop the cached `compute` result,
        # count the call); this second entry point does the same, or `compute` would go stale.
        self._computed = None
        self._update_count += 1
        self._add_rank_counts(greater, tied)

    def compute(self) -> dict[str, Tensor]:
        """``{"recall@K", "ndcg@K", "mrr@K"}`` for every K, each a scalar mean over queries."""
        if self.count == 0:
            raise ValueError("FullRankingMetrics.compute: no queries were added")
        recall = self.hits / self.count
        ndcg = self.ndcg_sum / self.count
        mrr = self.reciprocal_rank_sum / self.count
        return {
            **{f"recall@{k}": value for k, value in zip(self.ks, recall, strict=True)},
            **{f"ndcg@{k}": value for k, value in zip(self.ks, ndcg, strict=True)},
            **{f"mrr@{k}": value for k, value in zip(self.ks, mrr, strict=True)},
        }

    def _history_to_mask(self, history: Tensor | None) -> Tensor | None:
        if not self.mask_history:
            return None
        if history is None:
            raise ValueError("FullRankingMetrics(mask_history=True) needs the history of each query")
        return history

    def _add_rank_counts(self, greater: Tensor, tied: Tensor) -> None:
        """Add queries given ``(b)`` competitors scoring above and equal to their targets."""
        if self.ties == "pessimistic":
            greater, tied = greater + tied, torch.zeros_like(tied)
        # The target is equally likely at each rank greater .. greater + tied; a metric's expectation
        # is the sum of its per-rank values over the ranks below K, from cumulative tables, over t + 1.
        cutoffs = rearrange(torch.tensor(self.ks, device=greater.device), "k -> 1 k")
        first = torch.minimum(rearrange(greater, "b -> b 1"), cutoffs)  # (b k)
        stop = torch.minimum(rearrange(greater + tied + 1, "b -> b 1"), cutoffs)  # (b k)
        positions = rearrange(tied + 1, "b -> b 1").float()
        ranks = torch.arange(max(self.ks), device=greater.device, dtype=torch.float32)
        hit_table = _cumulative(torch.ones_like(ranks))
        gain_table = _cumulative(1.0 / torch.log2(ranks + 2.0))
        reciprocal_table = _cumulative(1.0 / (ranks + 1.0))
        self.hits += ((hit_table[stop] - hit_table[first]) / positions).sum(0)
        self.ndcg_sum += ((gain_table[stop] - gain_table[first]) / positions).sum(0)
        self.reciprocal_rank_sum += ((reciprocal_table[stop] - reciprocal_table[first]) / positions).sum(0)
        self.count += len(greater)


def _cumulative(values: Tensor) -> Tensor:
    """``(n)`` per-rank values -> ``(n + 1)`` table whose entry ``r`` sums the values of ranks ``< r``."""
    return torch.cat([values.new_zeros(1), values.cumsum(0)])


def _rank_counts_from_embeddings(
    query: Tensor, item_embeddings: Tensor, target: Tensor, history: Tensor | None, item_chunk_size: int
) -> tuple[Tensor, Tensor]:
    """``(b)`` competitors scoring above and equal to the target, chunk by chunk (see
    :func:`target_ranks_from_embeddings`)."""
    _check_embeddings(query, item_embeddings, item_chunk_size)
    num_items = len(item_embeddings)
    _check_query_inputs(target, history, num_items=num_items, batch_size=len(query))
    with torch.no_grad():
        target_embeddings = item_embeddings[target]  # (b d)
        greater = torch.zeros_like(target)
        tied = torch.zeros_like(target)
        nonfinite = torch.zeros_like(target, dtype=torch.bool)
        for start in range(1, num_items, item_chunk_size):
            end = min(start + item_chunk_size, num_items)
            # One product for the chunk and the targets, so that equal embeddings get equal scores.
            scores = query @ torch.cat([item_embeddings[start:end], target_embeddings]).T  # (b c+b)
            chunk_scores, target_score = scores[:, : end - start], torch.diagonal(scores[:, end - start :])
            competes = _competitor_mask(target, history, start=start, end=end)
            chunk_greater, chunk_tied, chunk_nonfinite = _count_outscoring(
                chunk_scores, target_score, competes
            )
            greater += chunk_greater
            tied += chunk_tied
            nonfinite |= chunk_nonfinite | ~torch.isfinite(target_score)
        _raise_if_nonfinite(nonfinite)
        return greater, tied


def _expected_rank(greater: Tensor, tied: Tensor, ties: TieRule) -> Tensor:
    return greater + tied if ties == "pessimistic" else greater + tied / 2.0


def _pessimistic_ranks(scores: Tensor, target_column: Tensor, competes: Tensor) -> Tensor:
    """``(b c)`` scores, ``(b)`` target column, ``(b c)`` bool competitors -> ``(b)`` long ranks.

    The pessimistic rank rule, shared by full ranking and candidate lists.
    """
    target_score = rearrange(scores.gather(1, rearrange(target_column, "b -> b 1")), "b 1 -> b")
    greater, tied, nonfinite = _count_outscoring(scores, target_score, competes)
    _raise_if_nonfinite(nonfinite | ~torch.isfinite(target_score))
    return greater + tied


def _count_outscoring(
    scores: Tensor, target_score: Tensor, competes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of a ``(b c)`` block: competitors scoring ``>`` and ``==`` the ``(b)`` target score,
    and whether any competitor's score is non-finite."""
    target_score = rearrange(target_score, "b -> b 1")
    greater = ((scores > target_score) & competes).sum(1)
    tied = ((scores == target_score) & competes).sum(1)
    nonfinite = (~torch.isfinite(scores) & competes).any(1)
    return greater, tied, nonfinite


def _raise_if_nonfinite(nonfinite_rows: Tensor) -> None:
    affected = int(nonfinite_rows.sum())
    if affected:
        raise ValueError(
            f"{affected} of {len(nonfinite_rows)} queries have non-finite (NaN or inf) scores for the "
            "target or a competing item; such scores cannot be ranked (a NaN target would count as a "
            "hit under a strict comparison). Check the model's output in eval mode."
        )


def _competitor_mask(target: Tensor, history: Tensor | None, start: int, end: int) -> Tensor:
    """``(b c)`` bool over items ``[start, end)``: True where the item competes with the target.

    Competitors are all items but padding (0), the target itself, and, given ``(b h)`` history,
    the items in the history.
    """
    columns = torch.arange(start, end, device=target.device)
    competes = (columns != 0) & (rearrange(columns, "c -> 1 c") != rearrange(target, "b -> b 1"))
    if history is None:
        return competes
    return competes & ~_seen_mask(history, start, end)


def _seen_mask(history: Tensor, start: int, end: int) -> Tensor:
    """``(b c)`` bool over items ``[start, end)``: True where the item is in the ``(b h)`` history."""
    width = end - start
    local = history - start
    in_block = (history != 0) & (local >= 0) & (local < width)
    # Entries outside this block (and padding) all land on one spare column, dropped afterwards,
    # so a single scatter of True marks exactly the history items inside the block.
    local = torch.where(in_block, local, width)
    seen = torch.zeros(len(history), width + 1, dtype=torch.bool, device=history.device)
    seen.scatter_(1, local, True)
    return seen[:, :width]


def _check_query_inputs(target: Tensor, history: Tensor | None, num_items: int, batch_size: int) -> None:
    if target.dim() != 1 or len(target) != batch_size:
        raise ValueError(f"target must be ({batch_size},), got shape {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"target must hold long item ids, got {target.dtype}")
    if len(target) and (int(target.min()) < 1 or int(target.max()) >= num_items):
        raise ValueError(
            f"target ids must lie in [1, {num_items}) (0 is padding), "
            f"got min {int(target.min())} max {int(target.max())}"
        )
    if history is not None:
        _check_history(history, num_items, batch_size, name="history")


def _check_history(history: Tensor, num_items: int, batch_size: int, name: str) -> None:
    if history.dim() != 2 or len(history) != batch_size or history.dtype != torch.long:
        raise ValueError(
            f"{name} must be long ({batch_size}, length), got {history.dtype} {tuple(history.shape)}"
        )
    if history.numel() and (int(history.min()) < 0 or int(history.max()) >= num_items):
        raise ValueError(
            f"{name} ids must lie in [0, {num_items}), got min {int(history.min())} max {int(history.max())}"
        )


def _check_embeddings(query: Tensor, item_embeddings: Tensor, item_chunk_size: int) -> None:
    if query.dim() != 2 or item_embeddings.dim() != 2 or query.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            "query must be (batch, hidden) and item_embeddings (items, hidden) with the same hidden "
            f"size, got {tuple(query.shape)} and {tuple(item_embeddings.shape)}"
        )
    if item_chunk_size < 1:
        raise ValueError(f"item_chunk_size must be >= 1, got {item_chunk_size}")


def _check_tie_rule(ties: str) -> None:
    if ties not in _TIE_RULES:
        raise ValueError(f"ties must be one of {_TIE_RULES}, got {ties!r}")


def _check_cutoffs(ks: Sequence[int]) -> tuple[int, ...]:
    cutoffs = tuple(int(k) for k in ks)
    if not cutoffs or min(cutoffs) < 1 or len(set(cutoffs)) != len(cutoffs):
        raise ValueError(f"cutoffs must be distinct positive integers, got {tuple(ks)}")
    return cutoffs


def _within_cutoffs(ranks: Tensor, ks: Sequence[int]) -> Tensor:
    """``(b)`` ranks -> ``(b k)`` bool, True where ``rank < K``."""
    cutoffs = torch.tensor(ks, device=ranks.device)
    return rearrange(ranks, "b -> b 1") < rearrange(cutoffs, "k -> 1 k")


def _discounted_gain(ranks: Tensor) -> Tensor:
    """``(b)`` ranks -> ``(b)`` DCG of a single relevant item at that rank, ``1 / log2(rank + 2)``."""
    return 1.0 / torch.log2(ranks.float() + 2.0)
