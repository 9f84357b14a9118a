"""Reasoning to Rank on the catalogue LM: does reasoning help the RL-trained ranker?

    python bench/r2rank_reasoning.py --lm outputs/catalogue-lm/model            # 5 seeds
    python bench/r2rank_reasoning.py --lm outputs/catalogue-lm/model --quick --seeds 1   # a smoke run

The catalogue LM comes first: ``lightning-rec fit --config configs/catalogue_lm/synthetic.yaml`` (or
``python bench/catalogue_lm.py``) writes ``outputs/catalogue-lm/model``.

Rows, on the same candidate lists (1 positive + 19 uniform negatives; the first ``TEST_QUERIES`` test
users):

- SFT only: ``ReasoningToRank(stage="sft")`` on the catalogue's teacher rationales, scored with
  greedy rationales;
- RL without reasoning: SFT then RL with ``reasoning=False`` (the score read at the prompt's last
  token; the head and the LLM trained by the listwise loss, then REINFORCE on Plackett-Luce rankings);
- RL with reasoning: the SFT-only model of the same seed, then RL (PPO on the rationale tokens with
  marginal-NDCG credit and a KL to the SFT policy, REINFORCE for the head);
- SASRec reranker and MostPopular: the ID-based bar and the floor (``bench/candidate_baselines.py``).

The paired differences are taken against "RL without reasoning": the issue's target is RL with
reasoning above it beyond the paired interval (the paper: NDCG@10 0.596 vs 0.458 on Video Games).
Costs per test user: rationale tokens generated and wall-clock seconds of scoring.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from candidate_baselines import evaluate, popularity_scorer, sasrec_scorer, train_sasrec
from harness import Bench, Trial

from lightning_rec.agents import HFCausalLM
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import CandidateRankingDataModule
from lightning_rec.modules import ReasoningToRank

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = 20
USERS_PER_STEP = 4
HISTORY_TITLES = 10
# Budget (fixed before the run), sized for about 30 min for 5 seeds on one CPU thread.
# Measured on the catalogue LM (one contended thread): greedy scoring with rationales 1.3 s per user,
# without 0.45 s; SFT 1.5 s per training list (0.65 without rationales), RL 3 s (0.6).
SFT_STEPS = 10  # x 4 users = 40 training lists
RL_STEPS = 5  # x 4 users = 20 training lists
VALID_QUERIES = 4  # reported, never used for selection: kept small, scoring is the cost
TEST_QUERIES = 64
SASREC_EPOCHS = 3
QUICK = {"sft_steps": 2, "rl_steps": 1, "valid": 4, "test": 8, "sasrec_epochs": 1}


def main() -> None:
    lm = ROOT / "outputs" / "catalogue-lm" / "model"
    if "--lm" in sys.argv:
        index = sys.argv.index("--lm")
        lm = Path(sys.argv[index + 1])
        del sys.argv[index : index + 2]
    if not (lm / "config.json").is_file():
        raise FileNotFoundError(
            f"{lm}: no catalogue LM; run `lightning-rec fit --config configs/catalogue_lm/synthetic.yaml` "
            "first (it writes outputs/catalogue-lm/model), or pass --lm <folder>"
        )
    torch.set_num_threads(1)
    bench = Bench(
        name="r2rank_reasoning",
        title="Reasoning to Rank on the catalogue LM: SFT, RL with and without reasoning, "
        "vs SASRec, MostPopular",
        protocol=f"Synthetic catalogue (2,000 users, 1,000 items, seed 0), 5-core, leave-one-out; each query "
        f"ranks its held-out item among {CANDIDATES - 1} uniform negatives (candidate_seed 0); the first "
        f"{TEST_QUERIES} test users; HR@1/3/5, their mean, NDCG@10 (ties against the positive); prompts: "
        f"the {HISTORY_TITLES} most recent titles and one candidate; greedy rationales at evaluation",
        budget=f"LM rows: SFT {SFT_STEPS} steps x {USERS_PER_STEP} users (lr 1e-3, head 3e-3), RL "
        f"{RL_STEPS} steps x {USERS_PER_STEP} users (lr 2e-4, head 3e-3, KL 0.05, 16 PL rankings, 1 PPO "
        f"pass), rationales <= 28 tokens; SASRec: {SASREC_EPOCHS} epochs of configs/sasrec/synthetic.yaml's "
        "model; MostPopular: none",
        selection=f"none for the LM rows (fixed budget, last step; validation NDCG@10 on {VALID_QUERIES} "
        "users is reported only); SASRec: best full-ranking validation NDCG@10 epoch",
        primary="ndcg@10",
        baseline="RL without reasoning",
        seeds=5,
    )
    quick = bench.quick
    sft_steps, rl_steps = (QUICK["sft_steps"], QUICK["rl_steps"]) if quick else (SFT_STEPS, RL_STEPS)
    valid_queries, test_queries = (QUICK["valid"], QUICK["test"]) if quick else (VALID_QUERIES, TEST_QUERIES)
    sasrec_epochs = QUICK["sasrec_epochs"] if quick else SASREC_EPOCHS
    source = SyntheticReviews(num_users=2000, num_items=1000, seed=0)
    data = CandidateRankingDataModule(
        source=source, max_len=50, num_candidates=CANDIDATES, history_titles=HISTORY_TITLES,
        train_on="candidate_lists", teacher_rationales="catalogue", batch_size=USERS_PER_STEP,
        eval_batch_size=USERS_PER_STEP,
    )  # fmt: skip
    data.training_rationales()  # built once, before any timing
    counts = data.item_popularity()
    bench.info["lm"] = str(lm)
    sft_cache: dict[int, ReasoningToRank] = {}

    def fit(model: ReasoningToRank, steps: int) -> None:
        trainer = L.Trainer(
            max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
            enable_checkpointing=False, limit_val_batches=0, accelerator="cpu",
        )  # fmt: skip
        trainer.fit(model, data)

    def sft(seed: int, reasoning: bool) -> ReasoningToRank:
        L.seed_everything(seed, verbose=False)
        llm = HFCausalLM(str(lm), batch_size=USERS_PER_STEP * CANDIDATES, seed=seed)
        model = ReasoningToRank(
            llm, stage="sft", reasoning=reasoning, max_rationale_tokens=28, learning_rate=1e-3,
            head_learning_rate=3e-3,
        )  # fmt: skip
        fit(model, sft_steps)
        return model

    def rl(start: ReasoningToRank, seed: int) -> ReasoningToRank:
        """RL from a copy of ``start``'s LLM and head (``start`` itself stays as it was)."""
        L.seed_everything(10_000 + seed, verbose=False)
        model = ReasoningToRank(
            copy.deepcopy(start.llm), stage="rl", reasoning=start.reasoning,
            score_head=copy.deepcopy(start.score_head),
            max_rationale_tokens=28, learning_rate=2e-4, head_learning_rate=3e-3, kl_coef=0.05,
            ranking_samples=16,
        )  # fmt: skip
        fit(model, rl_steps)
        return model

    def measured(scorer, model: ReasoningToRank | None = None):
        """Wrap ``scorer`` (or ``model.score``) to count users, seconds and tokens of the test scoring."""
        account = {"users": 0, "seconds": 0.0, "rationale_tokens": 0.0, "prompt_tokens": 0.0}

        def score(batch):
            start = time.perf_counter()
            if model is None:
                scores = scorer(batch)
            else:
                scores, tokens = model.score(batch)
                account["rationale_tokens"] += float(tokens.sum())
                account["prompt_tokens"] += sum(map(len, model.prompt_ids(batch)))
            account["seconds"] += time.perf_counter() - start
            account["users"] += len(batch)
            return scores

        def per_user() -> dict[str, float]:
            return {
                f"{name}_per_user": account[name] / account["users"]
                for name in ("rationale_tokens", "prompt_tokens", "seconds")
            }

        return score, per_user

    def lm_trial(model: ReasoningToRank) -> Trial:
        valid = evaluate(data, "valid", lambda batch: model.score(batch)[0], limit=valid_queries)

        def test() -> dict[str, float]:
            scorer, per_user = measured(None, model)
            return evaluate(data, "test", scorer, limit=test_queries) | per_user()

        return Trial(valid=valid, test=test, extra={"parameters": sum(p.numel() for p in model.parameters())})

    def id_trial(scorer) -> Trial:
        def test() -> dict[str, float]:
            timed, per_user = measured(scorer)
            return evaluate(data, "test", timed, limit=test_queries) | per_user()

        return Trial(valid=evaluate(data, "valid", scorer, limit=valid_queries), test=test)

    def trial(row: str, params: dict[str, Any], seed: int) -> Trial:
        ranker = params["ranker"]
        if ranker == "sft":
            sft_cache[seed] = sft(seed, reasoning=True)
            return lm_trial(sft_cache[seed])
        if ranker == "rl_plain":
            return lm_trial(rl(sft(seed, reasoning=False), seed))
        if ranker == "rl_reasoning":
            # From the SFT-only row's model of this seed (trained once).
            start = sft_cache.pop(seed) if seed in sft_cache else sft(seed, reasoning=True)
            return lm_trial(rl(start, seed))
        if ranker == "most_popular":
            return id_trial(popularity_scorer(counts))
        with tempfile.TemporaryDirectory(prefix="r2rank-sasrec-") as workdir:
            model = train_sasrec(source, seed, sasrec_epochs, Path(workdir))
        return id_trial(sasrec_scorer(model))

    bench.run(
        rows={
            "SFT only": {"ranker": "sft"},
            "RL without reasoning": {"ranker": "rl_plain"},
            "RL with reasoning": {"ranker": "rl_reasoning"},
            "SASRec reranker": {"ranker": "sasrec"},
            "MostPopular": {"ranker": "most_popular"},
        },
        trial=trial,
    )


if __name__ == "__main__":
    main()
