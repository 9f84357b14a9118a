"""Full-ranking metrics for next-item recommendation: Recall@K (= HR@K), NDCG@K and MRR@K.

Every query has one held-out target item and is ranked against the whole catalogue. The protocol
(``shared/specs/data.md``) fixes three rules that every path here follows:

- Column / item 0 is the padding item. It never competes with the target.
- Ties count against the target (pessimistic): the 0-based rank is the number of *other* eligible
  items whose score is ``>=`` the target's score. A model that scores every item the same therefore
  ranks its target last, not first.
- Scores must be finite. A rank computed as "how many items score strictly higher" turns a NaN
  target score into rank 0, a hit: an encoder that returned NaN in eval mode once scored an NDCG@10
  six times what the model can reach. So a non-finite score in any column that takes part in the
  ranking raises ``ValueError``; columns that do not take part (padding, masked history) may hold
  anything, e.g. ``-inf`` put there by the model itself.

One rank function serves dense scores (:func:`target_ranks`), item embeddings scored chunk by
chunk (:func:`target_ranks_from_embeddings`), and the candidate-list metrics in
``candidates.py``.

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

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

__all__ = ["FullRankingMetrics", "target_ranks", "target_ranks_from_embeddings"]


def target_ranks(scores: Tensor, target: Tensor, history: Tensor | None = None) -> Tensor:
    """0-based rank of each query's target among the catalogue, ties counted against the target.

    Args:
        scores: ``(b i)`` a score for every item; column 0 is the padding item and never competes.
        target: ``(b)`` long, the held-out item of each query, in ``[1, i)``.
        history: ``(b h)`` long or None, items the user has already seen (0 = padding). Given, the
            history's items are removed from the competition; the target keeps its place even if
            it is in the history.

    Returns:
        ``(b)`` long: the number of other eligible items with a score ``>=`` the target's score.

    Raises:
        ValueError: on inconsistent shapes, ids outside the catalogue, or a non-finite score in the
            target's column or in any competing column (the message says how many rows).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (batch, items), got shape {tuple(scores.shape)}")
    _check_query_inputs(target, history, num_items=scores.shape[1], batch_size=len(scores))
    with torch.no_grad():
        competes = _competitor_mask(target, history, start=0, end=scores.shape[1])
        return _pessimistic_ranks(scores, target, competes)


def target_ranks_from_embeddings(
    query: Tensor,
    item_embeddings: Tensor,
    target: Tensor,
    history: Tensor | None = None,
    item_chunk_size: int = 8192,
) -> Tensor:
    """:func:`target_ranks` of ``query @ item_embeddings.T``, without materialising ``(b i)``.

    First the target's score (row-wise dot product), then, ``item_chunk_size`` items at a time,
    the count of competing items scoring ``>=`` it. Peak memory is ``O(b * item_chunk_size)``.

    The ranks equal those of ``target_ranks(query @ item_embeddings.T, target, history)`` whenever
    both computations round the scores alike. Float matmul kernels round a column differently
    depending on the tile it falls in, so two items closer than the rounding error (about 1e-7
    relative in float32) can swap order between the two paths, as they can between two matmul shapes
    of the dense path itself. With exactly representable dot products (e.g. integer-valued
    embeddings) the two paths agree bit for bit, ties included.

    Args:
        query: ``(b d)`` query embeddings (e.g. the sequence encoder's last position).
        item_embeddings: ``(i d)`` the catalogue, row 0 the padding item.
        target: ``(b)`` long, in ``[1, i)``.
        history: ``(b h)`` long or None, as in :func:`target_ranks`.
        item_chunk_size: rows of ``item_embeddings`` scored at a time.

    Returns:
        ``(b)`` long ranks.
    """
    if query.dim() != 2 or item_embeddings.dim() != 2 or query.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            "query must be (batch, hidden) and item_embeddings (items, hidden) with the same hidden "
            f"size, got {tuple(query.shape)} and {tuple(item_embeddings.shape)}"
        )
    if item_chunk_size < 1:
        raise ValueError(f"item_chunk_size must be >= 1, got {item_chunk_size}")
    num_items = len(item_embeddings)
    _check_query_inputs(target, history, num_items=num_items, batch_size=len(query))
    with torch.no_grad():
        target_score = torch.einsum("bd,bd->b", query, item_embeddings[target])
        nonfinite = ~torch.isfinite(target_score)
        ranks = torch.zeros_like(target)
        for start in range(0, num_items, item_chunk_size):
            end = min(start + item_chunk_size, num_items)
            chunk_scores = query @ item_embeddings[start:end].T  # (b c)
            competes = _competitor_mask(target, history, start=start, end=end)
            outscoring, chunk_nonfinite = _count_outscoring(chunk_scores, target_score, competes)
            ranks += outscoring
            nonfinite |= chunk_nonfinite
        _raise_if_nonfinite(nonfinite)
        return ranks


class FullRankingMetrics(Metric):
    """Recall@K, NDCG@K and MRR@K of a held-out target ranked against the full catalogue.

    With one held-out target per query, Recall@K equals HR@K (hit ratio): 1 if the target is in
    the top K. NDCG@K is ``1 / log2(rank + 2)`` if ``rank < K`` else 0 (the ideal DCG is 1), MRR@K
    is ``1 / (rank + 1)`` if ``rank < K`` else 0, with the 0-based pessimistic ``rank`` of
    :func:`target_ranks`. All values are means over queries.

    States are sums (hits, NDCG, reciprocal ranks per K, and the query count) reduced with ``sum``
    across processes, so the result under DDP equals the single-process result on the same
    queries.

    Args:
        ks: the cutoffs K.
        mask_history: remove the items of each query's history from the competition. Off by
            default: the protocol ranks against every item but padding.
        item_chunk_size: items scored at a time by :meth:`update_from_embeddings`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self, ks: Sequence[int] = (5, 10, 20), mask_history: bool = False, item_chunk_size: int = 8192
    ) -> None:
        super().__init__()
        self.ks = _check_cutoffs(ks)
        if item_chunk_size < 1:
            raise ValueError(f"item_chunk_size must be >= 1, got {item_chunk_size}")
        self.mask_history = mask_history
        self.item_chunk_size = item_chunk_size
        num_cutoffs = len(self.ks)
        self.add_state("hits", torch.zeros(num_cutoffs, dtype=torch.long), dist_reduce_fx="sum")
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
        self._add_ranks(target_ranks(scores, target, self._history_to_mask(history)))

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
        ranks = target_ranks_from_embeddings(
            query, item_embeddings, target, self._history_to_mask(history), self.item_chunk_size
        )
        # torchmetrics wraps only `update` with its bookkeeping (drop the cached `compute` result,
        # count the call); this second entry point does the same, or `compute` would go stale.
        self._computed = None
        self._update_count += 1
        self._add_ranks(ranks)

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

    def _add_ranks(self, ranks: Tensor) -> None:
        within = _within_cutoffs(ranks, self.ks)  # (b k) bool
        self.hits += within.sum(0)
        self.ndcg_sum += (within * rearrange(_discounted_gain(ranks), "b -> b 1")).sum(0)
        self.reciprocal_rank_sum += (within / rearrange(ranks + 1, "b -> b 1")).sum(0)
        self.count += len(ranks)


def _pessimistic_ranks(scores: Tensor, target_column: Tensor, competes: Tensor) -> Tensor:
    """``(b c)`` scores, ``(b)`` target column, ``(b c)`` bool competitors -> ``(b)`` long ranks.

    The one rank rule of this package, shared by full ranking and candidate lists.
    """
    target_score = rearrange(scores.gather(1, rearrange(target_column, "b -> b 1")), "b 1 -> b")
    ranks, nonfinite = _count_outscoring(scores, target_score, competes)
    _raise_if_nonfinite(nonfinite | ~torch.isfinite(target_score))
    return ranks


def _count_outscoring(scores: Tensor, target_score: Tensor, competes: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of a ``(b c)`` block: competitors scoring ``>=`` the ``(b)`` target score (ties
    count against the target), and whether any competitor's score is non-finite."""
    outscoring = ((scores >= rearrange(target_score, "b -> b 1")) & competes).sum(1)
    nonfinite = (~torch.isfinite(scores) & competes).any(1)
    return outscoring, nonfinite


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
    width = end - start
    local = history - start
    in_block = (history != 0) & (local >= 0) & (local < width)
    # Entries outside this block (and padding) all land on one spare column, dropped afterwards,
    # so a single scatter of True marks exactly the history items inside the block.
    local = torch.where(in_block, local, width)
    seen = torch.zeros(len(target), width + 1, dtype=torch.bool, device=target.device)
    seen.scatter_(1, local, True)
    return competes & ~seen[:, :width]


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
    if history is None:
        return
    if history.dim() != 2 or len(history) != batch_size or history.dtype != torch.long:
        raise ValueError(
            f"history must be long ({batch_size}, history), got {history.dtype} {tuple(history.shape)}"
        )
    if history.numel() and (int(history.min()) < 0 or int(history.max()) >= num_items):
        raise ValueError(
            f"history ids must lie in [0, {num_items}), got min {int(history.min())} max {int(history.max())}"
        )


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
