"""S-GRec's policy stage, synthetic catalogue: A2PO against business-only, adv_sum and a reward_sum sweep.

Data: the synthetic catalogue with aspect preferences (half the users novelty-seeking, half loyal;
``aspect_strength`` 10, 30 categories), leave-one-out, max length 50. Per seed: the judge stage (SASRec
generator warm start by next-item CE + the judge's stage B, Bradley-Terry on MiniLM evidence) trains
once; every policy row then starts from that same checkpoint (paired) and trains with the same seed.
The business reward is a click sampled from the catalogue's ground-truth preference times the item's
price (its bid); the semantic reward is the judge's holistic score. Every policy row has the same
supervised anchor (next-item CE, weight ``--anchor-weight``) and PPO settings (``--ppo-epochs`` passes
of ``--num-minibatches`` minibatches on each rollout).

Metrics (test queries: each user's held-out last item): ``ecpm@10``, the simulator's expected eCPM of
the top-10 (click probability times bid, averaged over the slate); HR@10 and NDCG@10 of the held-out
item; ``judge@10``, the mean score of the top-10 by an **independent judge**, trained by a judge
stage on another seed (seed + 1000) than the judge that gave the reward, so that a policy cannot
score well by exploiting its own reward model's errors; ``reward_judge@10`` is the reward judge's.

Targets (issue 12, item 4): A2PO raises eCPM over the warm start and over business-only, raises the
judge score over the warm start, and loses at most 2% relative HR@10.

Run from the repository root (one thread; the models are tiny):

    .venv/bin/python bench/sgrec_ablation.py               # 5 seeds
    .venv/bin/python bench/sgrec_ablation.py --quick --seeds 2   # small: a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from harness import Bench, Trial, paired_interval  # noqa: E402

from lightning_rec.blocks import EmbeddingAspectEvidence  # noqa: E402
from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.data import SyntheticReviews  # noqa: E402
from lightning_rec.datamodules import SequentialRecDataModule  # noqa: E402
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained  # noqa: E402
from lightning_rec.modules import SGRec  # noqa: E402
from lightning_rec.modules.sgrec import item_bids  # noqa: E402

INDEPENDENT_JUDGE_SEED = 1000


def trainer(**kwargs: Any) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1,
                    num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def load_evidence() -> EmbeddingAspectEvidence:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_pretrained(MINILM_HUB_ID)
    return EmbeddingAspectEvidence(
        AutoModel.from_pretrained(path, use_safetensors=True),
        AutoTokenizer.from_pretrained(path),
        model_name=MINILM_HUB_ID,
    )


class Experiment:
    """The data, the evidence backend and the per-seed judge stages, shared by every row of a seed."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        source = SyntheticReviews(
            num_users=args.num_users, num_items=args.num_items, num_categories=30,
            aspect_strength=args.aspect_strength, cache_dir=str(workdir),
        )  # fmt: skip
        self.data = SequentialRecDataModule(
            source=source, cache_dir=str(workdir), batch_size=64, eval_batch_size=512
        )
        self.evidence = load_evidence()
        self.starts: dict[int, Path] = {}
        self.judges: dict[int, dict[str, torch.Tensor]] = {}

    def build(self, **kwargs: Any) -> SGRec:
        encoder = SASRecEncoder(num_items=self.data.num_items, hidden_size=self.args.hidden_size, max_len=50,
                                num_layers=2, num_heads=2, dropout=0.2)  # fmt: skip
        model = SGRec(encoder=encoder, score_cache_dir=str(self.workdir / "scores"), **kwargs)
        model.attach_evidence(self.evidence)
        return model

    def judge_stage(self, seed: int) -> Path:
        """The judge stage of ``seed`` (trained once per seed), saved as a Hub folder."""
        if seed not in self.starts:
            L.seed_everything(seed, verbose=False)
            model = self.build(stage="judge", learning_rate=3e-3)
            trainer(max_epochs=self.args.judge_epochs, check_val_every_n_epoch=1000).fit(model, self.data)
            self.starts[seed] = self.workdir / f"judge-stage-{seed}"
            model.save_pretrained(self.starts[seed])
            self.judges[seed] = {k: v.clone() for k, v in model.judge.state_dict().items()}
        return self.starts[seed]

    def evaluate(self, model: SGRec, seed: int, split: str) -> dict[str, float]:
        """Ranking, eCPM, the reward judge's score, then the independent judge's score of the same slates."""
        run = trainer().validate if split == "val" else trainer().test
        results = run(model, self.data, verbose=False)[0]
        reward_judge = {k: v.clone() for k, v in model.judge.state_dict().items()}
        model.judge.load_state_dict(self.judges[seed + INDEPENDENT_JUDGE_SEED])
        independent = run(model, self.data, verbose=False)[0]
        model.judge.load_state_dict(reward_judge)
        slate = f"@{model.slate_size}"
        return {
            f"ecpm{slate}": results[f"{split}/ecpm{slate}"],
            "hr@10": results[f"{split}/recall@10"],
            "ndcg@10": results[f"{split}/ndcg@10"],
            f"judge{slate}": independent[f"{split}/judge_score{slate}"],
            f"reward_judge{slate}": results[f"{split}/judge_score{slate}"],
        }

    def trial(self, row: str, params: dict[str, Any], seed: int) -> Trial:
        start = self.judge_stage(seed)
        self.judge_stage(seed + INDEPENDENT_JUDGE_SEED)
        clock = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        if params["mode"] == "warm_start":
            model = self.build(stage="policy", pretrained=str(start))
            extra: dict[str, Any] = {}
        else:
            model = self.build(
                stage="policy", pretrained=str(start), advantage_mode=params["mode"],
                semantic_weight=params.get("semantic_weight", 1.0), group_size=self.args.group_size,
                learning_rate=self.args.policy_lr, anchor_weight=self.args.anchor_weight,
                ppo_epochs=self.args.ppo_epochs, num_minibatches=self.args.num_minibatches,
            )  # fmt: skip
            fit = trainer(max_epochs=self.args.policy_epochs, check_val_every_n_epoch=1000)
            fit.fit(model, self.data)
            extra = {"clip_fraction": float(fit.callback_metrics["train/a2po_clip_fraction"])}
        valid = self.evaluate(model, seed, "val")
        extra["seconds"] = time.perf_counter() - clock
        return Trial(valid=valid, test=lambda: self.evaluate(model, seed, "test"), extra=extra)


def main() -> None:
    bench = Bench(
        name="sgrec_ablation",
        title="S-GRec policy stage: A2PO vs business-only, adv_sum, a reward_sum sweep (synthetic catalogue)",
        protocol=(
            "synthetic catalogue with novelty-seeking and loyal users (aspect_strength 10, 30 categories), "
            "leave-one-out; eCPM@10 = simulator's expected click x bid of the top-10; HR/NDCG@10 of the "
            "held-out item; judge@10 = top-10 score of a judge trained on another seed than the reward judge"
        ),
        budget="",  # set below from the arguments, before the run
        selection="none (fixed epochs; every row trains the same number of epochs from the same start)",
        primary="ecpm@10",
        baseline="warm start",
    )
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-users", type=int, default=600)
    parser.add_argument("--num-items", type=int, default=300)
    parser.add_argument("--aspect-strength", type=float, default=10.0)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--judge-epochs", type=int, default=15)
    parser.add_argument("--policy-epochs", type=int, default=5)
    parser.add_argument("--policy-lr", type=float, default=1e-3)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--anchor-weight", type=float, default=0.1)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--num-minibatches", type=int, default=2)
    parser.add_argument("--reward-sum-weights", type=float, nargs="+", default=[3.0, 30.0])
    args = parser.parse_args(bench.unparsed)
    if bench.quick:
        args.num_users, args.num_items, args.judge_epochs, args.policy_epochs = 300, 150, 3, 1
    bench.budget = (
        f"judge stage {args.judge_epochs} epochs (lr 3e-3); policy stage {args.policy_epochs} epochs, lr "
        f"{args.policy_lr}, G {args.group_size}, ppo_epochs {args.ppo_epochs} x {args.num_minibatches} "
        f"minibatches, anchor weight {args.anchor_weight}; {args.num_users} users, {args.num_items} items"
    )
    # One thread: the models are tiny, and on a shared machine two OpenMP threads mostly spin.
    torch.set_num_threads(1)
    rows: dict[str, dict[str, Any]] = {
        "warm start": {"mode": "warm_start"},
        "business_only": {"mode": "business_only"},
        **{
            f"reward_sum w={w:g}": {"mode": "reward_sum", "semantic_weight": w}
            for w in args.reward_sum_weights
        },
        "adv_sum": {"mode": "adv_sum"},
        "A2PO": {"mode": "a2po"},
    }
    with tempfile.TemporaryDirectory() as tmp:
        experiment = Experiment(args, Path(tmp))
        bids = item_bids([None if p != p else float(p) for p in experiment.data.data.item_price.tolist()])
        bench.info |= {"data": experiment.data.data.stats(), "mean_bid": float(bids[1:].mean())}
        result = bench.run(rows=rows, trial=experiment.trial)
    report_targets(result)


def report_targets(result: dict[str, Any]) -> None:
    """Item 4's targets, from the per-seed test metrics (paired, same seeds and starts)."""
    rows = result["rows"]
    if "A2PO" not in rows or "business_only" not in rows:
        return

    def per_seed(row: str, metric: str) -> list[float]:
        return [entry["test"][metric] for entry in rows[row]["per_seed"]]

    a2po_hr, start_hr = per_seed("A2PO", "hr@10"), per_seed("warm start", "hr@10")
    relative_hr = statistics.fmean(a2po_hr) / statistics.fmean(start_hr) - 1
    lines = []
    for metric, other in (
        ("ecpm@10", "warm start"),
        ("ecpm@10", "business_only"),
        ("judge@10", "warm start"),
    ):
        interval = paired_interval(per_seed("A2PO", metric), per_seed(other, metric))
        verdict = (
            "within noise" if interval["within_noise"] else ("met" if interval["mean"] > 0 else "MISSED")
        )
        lines.append(
            f"A2PO - {other} on {metric}: {interval['mean']:+.4f} "
            f"[{interval['low']:+.4f}, {interval['high']:+.4f}] over {interval['n']} seeds: {verdict}"
        )
    lines.append(f"A2PO HR@10 relative to the warm start: {100 * relative_hr:+.1f}% (target >= -2%)")
    print("\n".join(["", "Targets (paired over seeds; test metrics):", *lines]))


if __name__ == "__main__":
    main()
