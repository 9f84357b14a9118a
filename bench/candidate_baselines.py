"""Baselines of the candidate-ranking protocol (1 positive + 19 sampled negatives) on the synthetic catalogue.

    python bench/candidate_baselines.py              # 3 seeds; SASRec trains 6 epochs per seed
    python bench/candidate_baselines.py --quick      # a small catalogue, 1 epoch, 2 seeds (smoke run)

Rows: Random (seeded uniform scores), MostPopular (training next-item counts) and a SASRec reranker
(configs/sasrec/synthetic.yaml's model, trained on the same sequential split, scoring only the
candidates). These are the floor and the ID-based bar that the language-model rankers (Reasoning to
Rank, STAR, ChainRec, AMA) are compared with.

When the catalogue LM has been trained (``bench/catalogue_lm.py`` writes ``outputs/catalogue-lm/model``),
a second table scores the first ``LM_QUERIES`` test queries zero-shot with it: each candidate's
summed log-probability as the continuation ``" <title>."`` of ``"History: <t1>; ...; <tn>.\\nNext:"``
(the corpus format), next to the three baselines on the same queries.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from harness import Bench, Trial
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.catalogue_corpus import history_prompt, next_title
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import CandidateBatch, CandidateRankingDataModule, SequentialRecDataModule
from lightning_rec.metrics import CandidateRankingMetrics
from lightning_rec.modules import SASRec

ROOT = Path(__file__).resolve().parents[1]
LM_FOLDER = ROOT / "outputs" / "catalogue-lm" / "model"
EPOCHS = 6
HISTORY_TITLES = 10
LM_QUERIES = 300


def _source(quick: bool) -> SyntheticReviews:
    if quick:
        return SyntheticReviews(num_users=300, num_items=200, num_categories=10, seed=0)
    return SyntheticReviews(num_users=2000, num_items=1000, seed=0)


def evaluate(
    data: CandidateRankingDataModule, split: str, scorer, limit: int | None = None
) -> dict[str, float]:
    """HR@1/3/5, their mean and NDCG@10 of ``scorer(batch) -> (b c)`` over a split's candidate lists."""
    metrics = CandidateRankingMetrics(ks=(1, 3, 5), ndcg_k=10)
    loader = data.val_dataloader() if split == "valid" else data.test_dataloader()
    seen = 0
    with torch.no_grad():
        for batch in loader:
            if limit is not None and seen >= limit:
                break
            keep = len(batch) if limit is None else min(len(batch), limit - seen)
            scores = scorer(batch)[:keep]
            metrics.update(scores.float(), batch.positive_index[:keep])
            seen += keep
    return {name: float(value) for name, value in metrics.compute().items()}


def train_sasrec(source: SyntheticReviews, seed: int, epochs: int, workdir: Path) -> SASRec:
    """configs/sasrec/synthetic.yaml's SASRec for ``epochs`` epochs, best epoch on validation NDCG@10
    (full ranking: the reranker is selected as a recommender, never on the candidate lists)."""
    L.seed_everything(seed, verbose=False)
    data = SequentialRecDataModule(source=source, k_core=5, max_len=50, batch_size=128, eval_batch_size=512)
    encoder = SASRecEncoder(
        num_items=data.num_items, hidden_size=64, max_len=50, num_layers=2, num_heads=2, dropout=0.2
    )
    model = SASRec(encoder=encoder, loss="ce", learning_rate=0.002)
    checkpoint = ModelCheckpoint(dirpath=workdir, filename="best", monitor="val/ndcg@10", mode="max")
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[checkpoint],
    )
    trainer.fit(model, data)
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    return model.eval()


def sasrec_scorer(model: SASRec):
    return lambda batch: model(batch.input_ids).gather(1, batch.candidates)


def popularity_scorer(counts: torch.Tensor):
    return lambda batch: counts[batch.candidates]


def random_scorer(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda batch: torch.rand(batch.candidates.shape, generator=generator)


def lm_scorer(llm):
    """Zero-shot likelihood of each candidate's title after the history, in the corpus format."""

    def score(batch: CandidateBatch) -> torch.Tensor:
        prompts = [
            history_prompt(titles) for titles in batch.history_titles for _ in batch.candidate_titles[0]
        ]
        continuations = [next_title(title) for titles in batch.candidate_titles for title in titles]
        return llm.score(prompts, continuations).reshape(batch.candidates.shape)

    return score


def add_lm_table(
    bench: Bench, candidates: CandidateRankingDataModule, counts: torch.Tensor, sasrec: SASRec, seed: int
) -> None:
    """The catalogue LM, zero-shot, next to the baselines on the first ``LM_QUERIES`` test queries."""
    from lightning_rec.agents import HFCausalLM

    llm = HFCausalLM(str(LM_FOLDER), batch_size=40)
    rows = {
        "Random": random_scorer(10_000 + seed),
        "MostPopular": popularity_scorer(counts),
        "SASRec reranker": sasrec_scorer(sasrec),
        "Catalogue LM (zero-shot likelihood)": lm_scorer(llm),
    }
    table = []
    for name, scorer in rows.items():
        metrics = evaluate(candidates, "test", scorer, limit=LM_QUERIES)
        table.append([name, *(round(metrics[k], 4) for k in ("hr@1", "hr@3", "hr@5", "hr_mean", "ndcg@10"))])
    bench.add_table(
        f"The first {LM_QUERIES} test queries, seed {seed}: the catalogue LM (outputs/catalogue-lm/model, "
        f"{HISTORY_TITLES} most recent titles as text) ranks candidates by likelihood, untuned",
        ["row", "hr@1", "hr@3", "hr@5", "hr_mean", "ndcg@10"],
        table,
    )
    bench.info["lm_usage"] = vars(llm.usage)


def main() -> None:
    bench = Bench(
        name="candidate_baselines",
        title="Candidate ranking (1 positive + 19 negatives): Random, MostPopular, SASRec reranker",
        protocol="Synthetic catalogue (2,000 users, 1,000 items, seed 0), 5-core, leave-one-out; each "
        "validation/test query ranks its held-out item among 19 negatives drawn uniformly from items the "
        "user never interacted with (seeded per query, candidate_seed 0); HR@1/3/5, their mean, NDCG@10; "
        "ties count against the positive",
        budget=f"SASRec: {EPOCHS} epochs of configs/sasrec/synthetic.yaml's model (d 64, 2 layers, CE, "
        "lr 2e-3); MostPopular and Random need no training",
        selection="SASRec: the epoch with the best full-ranking validation NDCG@10",
        primary="hr_mean",
        baseline="Random",
        seeds=3,
    )
    quick = bench.quick
    epochs = 1 if quick else EPOCHS
    source = _source(quick)
    candidates = CandidateRankingDataModule(source=source, max_len=50, history_titles=HISTORY_TITLES)
    counts = candidates.item_popularity()
    bench.info["queries"] = {
        "valid": len(candidates.data.valid_positions),
        "test": len(candidates.data.test_positions),
    }

    def trial(row: str, params: dict[str, Any], seed: int) -> Trial:
        if params["ranker"] == "random":
            # A fresh generator per split keeps test draws independent of how many validation batches ran.
            return Trial(
                valid=evaluate(candidates, "valid", random_scorer(seed)),
                test=lambda: evaluate(candidates, "test", random_scorer(10_000 + seed)),
            )
        if params["ranker"] == "most_popular":
            scorer = popularity_scorer(counts)
            return Trial(
                valid=evaluate(candidates, "valid", scorer), test=lambda: evaluate(candidates, "test", scorer)
            )
        with tempfile.TemporaryDirectory(prefix="candidates-sasrec-") as workdir:
            model = train_sasrec(source, seed, epochs, Path(workdir))
        if seed == bench.seeds[0] and LM_FOLDER.is_dir() and not quick:
            add_lm_table(bench, candidates, counts, model, seed)
        scorer = sasrec_scorer(model)
        return Trial(
            valid=evaluate(candidates, "valid", scorer), test=lambda: evaluate(candidates, "test", scorer)
        )

    bench.run(
        rows={
            "Random": {"ranker": "random"},
            "MostPopular": {"ranker": "most_popular"},
            "SASRec reranker": {"ranker": "sasrec"},
        },
        trial=trial,
    )


if __name__ == "__main__":
    main()
