"""Baselines of the candidate-ranking protocol (1 positive + 19 sampled negatives) on the synthetic catalogue.

    python bench/candidate_baselines.py              # 5 seeds; SASRec trains 6 epochs per seed
    python bench/candidate_baselines.py --quick      # a small catalogue, 1 epoch, 2 seeds (smoke run)

Rows: Random (seeded uniform scores), MostPopular (training next-item counts) and a SASRec reranker
(configs/sasrec/synthetic.yaml's model, trained on the same sequential split, scoring only the
candidates). These are the floor and the ID-based bar that the language-model rankers (Reasoning to
Rank, STAR, ChainRec, AMA) are compared with.

``--lm`` runs a second bench (``candidate_lm_zero_shot``) once the catalogue LM is trained
(``bench/catalogue_lm.py`` writes ``outputs/catalogue-lm/model``): it scores the first ``LM_QUERIES``
validation and test queries zero-shot, each candidate by the summed log-probability of the
continuation ``" <title>."`` after ``"History: <t1>; ...; <tn>.\\nNext:"`` (the corpus format), next
to Random and MostPopular on the same queries.
"""

from __future__ import annotations

import sys
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


def main() -> None:
    if "--lm" in sys.argv:
        sys.argv.remove("--lm")
        return lm_zero_shot()
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
        seeds=5,
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


def lm_zero_shot() -> None:
    """The catalogue LM, zero-shot, next to Random and MostPopular on the first ``LM_QUERIES`` queries."""
    from lightning_rec.agents import HFCausalLM

    if not LM_FOLDER.is_dir():
        raise FileNotFoundError(f"{LM_FOLDER}: train the catalogue LM first (python bench/catalogue_lm.py)")
    bench = Bench(
        name="candidate_lm_zero_shot",
        title="Candidate ranking: the catalogue LM zero-shot (likelihood of each title) "
        "vs Random, MostPopular",
        protocol="As candidate_baselines (synthetic catalogue, 1 positive + 19 uniform negatives), on the "
        f"first {LM_QUERIES} validation and test queries only (LM scoring costs 20 forward passes per "
        "query). The LM (outputs/catalogue-lm/model, configs/catalogue_lm/synthetic.yaml) scores each "
        "candidate by the summed log-probability of ' <title>.' after "
        f"'History: <{HISTORY_TITLES} most recent titles>.\\nNext:'",
        budget="no training here: the LM as pretrained by bench/catalogue_lm.py, untuned; no prompt search",
        selection="none (nothing is tuned)",
        primary="hr_mean",
        baseline="Random",
        seeds=5,
    )
    candidates = CandidateRankingDataModule(
        source=_source(False), max_len=50, history_titles=HISTORY_TITLES, eval_batch_size=20
    )
    counts = candidates.item_popularity()
    llm = HFCausalLM(str(LM_FOLDER), batch_size=40)

    def trial(row: str, params: dict[str, Any], seed: int) -> Trial:
        if params["ranker"] == "random":
            valid_scorer, test_scorer = random_scorer(seed), random_scorer(10_000 + seed)
        else:
            valid_scorer = test_scorer = (
                lm_scorer(llm) if params["ranker"] == "lm" else popularity_scorer(counts)
            )
        return Trial(
            valid=evaluate(candidates, "valid", valid_scorer, limit=LM_QUERIES),
            test=lambda: evaluate(candidates, "test", test_scorer, limit=LM_QUERIES),
            extra={"lm_seconds_so_far": llm.usage.seconds},
        )

    bench.run(
        rows={
            "Random": {"ranker": "random"},
            "MostPopular": {"ranker": "most_popular"},
            "Catalogue LM (zero-shot)": {"ranker": "lm"},
        },
        trial=trial,
    )


if __name__ == "__main__":
    main()
