"""SASRec: Self-Attentive Sequential Recommendation (Kang & McAuley, ICDM 2018, arXiv 1808.09781).

The training module is the shared :class:`SequentialRecommender`; SASRec is its default pairing with
the :class:`~lightning_rec.blocks.SASRec` encoder. The encoder is injectable, so the same module
trains GRU4Rec, BERT4Rec or HSTU (``--model.encoder GRU4Rec``). Differences from the paper, both
options: the default loss is full-softmax cross-entropy (``loss="bce"`` gives the paper's sampled
binary cross-entropy), and the optimiser is AdamW with optional warm-up.
"""

from __future__ import annotations

from lightning_rec.modules.sequential_recommender import SequentialRecommender

__all__ = ["SASRec"]


class SASRec(SequentialRecommender):
    """SASRec training (arXiv 1808.09781); see :class:`SequentialRecommender` for the arguments.

    Example::

        from lightning_rec.blocks import SASRec as SASRecEncoder
        model = SASRec(encoder=SASRecEncoder(num_items=1682, hidden_size=64, num_layers=2, num_heads=2))
    """
