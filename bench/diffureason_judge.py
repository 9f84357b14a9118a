"""DiffuReason with S-GRec's judge in its GRPO reward against plain DiffuReason (synthetic catalogue).

The cross-method config ``configs/diffureason/judge-reward.yaml`` on a smaller catalogue: each sampled
intent earns NDCG of the target plus ``--judge-weight`` times the judge's mean holistic score of its
top-10 items (S-GRec's "reward_sum" combination), against the NDCG reward alone.

Data: the synthetic catalogue with novelty-seeking and loyal users (``aspect_strength`` 10, 30
categories; the data of ``configs/sgrec/judge.yaml``), leave-one-out, max length 50. Per seed, S-GRec's
judge stage (Bradley-Terry on MiniLM evidence, as ``bench/sgrec_ablation.py``) trains the **reward
judge** on that seed and an **independent judge** on seed + 1000; the reward judge is read by
:class:`~lightning_rec.modules.JudgeReward` from the judge stage's saved folder, exactly as the YAML's
``pretrained`` does. Both rows then train with the same seed, the same epochs and early stopping on
validation NDCG@10, and are tested with their best-validation checkpoint.

Metrics (test queries: each user's held-out last item): NDCG@10 and HR@10 of the held-out item;
``judge@10``, the mean score of each query's recommended top-10 (history excluded) by the independent
judge, so that a policy cannot score well by exploiting its own reward model's errors;
``reward_judge@10``, the same by the reward judge.

Run from the repository root (one thread; the models are tiny):

    .venv/bin/python bench/diffureason_judge.py                    # 5 seeds, 2 rows
    .venv/bin/python bench/diffureason_judge.py --quick --seeds 1  # small: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from harness import Bench, Trial  # noqa: E402
from sgrec_ablation import INDEPENDENT_JUDGE_SEED, Experiment, trainer  # noqa: E402

from lightning_rec.blocks import DiffusionHead, PersonalizedSemanticJudge  # noqa: E402
from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.modules import DiffuReason, JudgeReward  # noqa: E402

SLATE = 10


class DiffuReasonJudgeExperiment:
    """The data, MiniLM and the judge stages of S-GRec's bench (shared by both rows of a seed), and the
    DiffuReason runs."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.judges = Experiment(args, workdir)
        self.data = self.judges.data

    def judge_reward(self, seed: int) -> JudgeReward:
        """The judge trained by S-GRec's judge stage on ``seed``, as a reward (read from its saved folder)."""
        reward = JudgeReward(
            judge=PersonalizedSemanticJudge(), pretrained=str(self.judges.judge_stage(seed)),
            score_cache_dir=str(self.workdir / "scores"),
        )  # fmt: skip
        reward.attach_evidence(self.judges.evidence)
        reward.setup(self.data.data)
        return reward

    def build(self, with_judge: bool, seed: int) -> DiffuReason:
        args = self.args
        encoder = SASRecEncoder(num_items=self.data.num_items, hidden_size=args.hidden_size, max_len=50,
                                num_layers=2, num_heads=2, dropout=0.2)  # fmt: skip
        head = DiffusionHead(hidden_size=args.hidden_size, num_steps=32, sampling_steps=8, schedule="cosine")
        judge = (
            {"reward_model": self.judge_reward(seed), "reward_model_weight": args.judge_weight}
            if with_judge
            else {}
        )
        return DiffuReason(
            encoder=encoder, diffusion=head, grpo_warmup_steps=args.grpo_warmup_steps,
            group_size=args.group_size, learning_rate=args.learning_rate, reward_model_slate=SLATE, **judge,
        )  # fmt: skip

    @torch.no_grad()
    def judge_scores(self, model: DiffuReason, seed: int) -> dict[str, float]:
        """Mean score of each test query's recommended top-10 by the independent and by the reward judge."""
        judges = {
            f"judge@{SLATE}": self.judge_reward(seed + INDEPENDENT_JUDGE_SEED),
            f"reward_judge@{SLATE}": self.judge_reward(seed),
        }
        totals = dict.fromkeys(judges, 0.0)
        count = 0
        model.eval()
        for batch in self.data.test_dataloader():
            items, _ = model.recommend(batch.input_ids, k=SLATE)
            for name, judge in judges.items():
                totals[name] += float(judge(batch.input_ids, items).mean(dim=1).sum())
            count += len(batch.input_ids)
        return {name: total / count for name, total in totals.items()}

    def trial(self, row: str, params: dict[str, Any], seed: int) -> Trial:
        # Both judge stages first (cached per seed), so that the row's clock counts DiffuReason alone.
        self.judges.judge_stage(seed)
        self.judges.judge_stage(seed + INDEPENDENT_JUDGE_SEED)
        clock = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        model = self.build(params["judge"], seed)
        checkpoint = L.pytorch.callbacks.ModelCheckpoint(
            dirpath=self.workdir / f"{row}-{seed}".replace(" ", "_"), monitor="val/ndcg@10", mode="max"
        )
        stop = L.pytorch.callbacks.EarlyStopping(
            monitor="val/ndcg@10", mode="max", patience=self.args.patience
        )
        fit = trainer(
            max_epochs=self.args.max_epochs, enable_checkpointing=True, callbacks=[checkpoint, stop]
        )
        fit.fit(model, self.data)
        extra = {"epochs": fit.current_epoch, "seconds": time.perf_counter() - clock}
        if params["judge"]:
            extra["train_reward_model_mean"] = float(fit.callback_metrics["train/grpo_reward_model_mean"])

        def test() -> dict[str, float]:
            results = fit.test(model, self.data, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
            return {
                "ndcg@10": results["test/ndcg@10"],
                "hr@10": results["test/recall@10"],
                **self.judge_scores(model, seed),
            }

        return Trial(valid={"ndcg@10": float(checkpoint.best_model_score)}, test=test, extra=extra)


def main() -> None:
    bench = Bench(
        name="diffureason_judge",
        title="DiffuReason with S-GRec's judge in the GRPO reward vs plain DiffuReason (synthetic catalogue)",
        protocol=(
            "synthetic catalogue with novelty-seeking and loyal users (aspect_strength 10, 30 categories), "
            "leave-one-out, full ranking with the history masked; NDCG/HR@10 of the held-out item; "
            "judge@10 = mean top-10 score of a judge trained on another seed than the reward judge"
        ),
        budget="",  # set below from the arguments, before the run
        selection="validation NDCG@10 (best epoch's checkpoint, early stopping)",
        primary="ndcg@10",
        baseline="DiffuReason",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-users", type=int, default=600)
    parser.add_argument("--num-items", type=int, default=300)
    parser.add_argument("--aspect-strength", type=float, default=10.0)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--judge-epochs", type=int, default=15)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--grpo-warmup-steps", type=int, default=40)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--judge-weight", type=float, default=1.0)
    args = parser.parse_args(bench.unparsed)
    if bench.quick:
        args.num_users, args.num_items, args.judge_epochs, args.max_epochs = 300, 150, 3, 3
        args.grpo_warmup_steps = 5
    bench.budget = (
        f"judge stages {args.judge_epochs} epochs (lr 3e-3); DiffuReason at most {args.max_epochs} epochs, "
        f"early stopping patience {args.patience} on validation NDCG@10, GRPO after {args.grpo_warmup_steps} "
        f"steps, G {args.group_size}, lr {args.learning_rate}, judge weight {args.judge_weight}, slate "
        f"{SLATE}; {args.num_users} users, {args.num_items} items"
    )
    # One thread: the models are tiny, and on a shared machine two OpenMP threads mostly spin.
    torch.set_num_threads(1)
    rows = {"DiffuReason": {"judge": False}, "DiffuReason + judge reward": {"judge": True}}
    with tempfile.TemporaryDirectory() as tmp:
        experiment = DiffuReasonJudgeExperiment(args, Path(tmp))
        bench.info |= {"data": experiment.data.data.stats()}
        bench.run(rows=rows, trial=experiment.trial)


if __name__ == "__main__":
    main()
