"""S-GRec ablation on the synthetic catalogue: business reward only, reward_sum, adv_sum and A2PO.

Per seed: the judge stage (SASRec generator warm start + the judge's stage B, Bradley-Terry, on MiniLM
evidence) trains once; then each advantage mode trains the policy stage from that same checkpoint
(a paired comparison) with the same seed. The business reward is a click sampled from the catalogue's
ground-truth preference times the item's price (its bid); the semantic reward is the judge's holistic
score. The catalogue is fixed (seed 0); the seed changes initialisation and sampling.

Run from the repository root with the project's environment:

    .venv/bin/python bench/sgrec_ablation.py --seeds 0 1 2

Printed, mean ± std over the seeds, on the test queries (each user's held-out last item): the
simulator's expected eCPM of the top-10 items per request (click probability times bid, averaged
over the slate), HR@10 and NDCG@10 of the held-out item, and the mean judge score of the top-10;
then the paired differences to business-only and the issue's targets: A2PO at least as good as
business-only on eCPM (within the seed spread) with a higher judge score, and reward_sum worse on
eCPM (the collapse the paper reports).

reward_sum adds ``semantic_weight * judge score`` to the eCPM; the weight defaults to the catalogue's
mean bid, so that the judge score is in the units of the business reward. adv_sum and A2PO add
z-scored advantages and use weight 1 (the paper's A2PO).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning_rec.blocks import EmbeddingAspectEvidence  # noqa: E402
from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.data import SyntheticReviews  # noqa: E402
from lightning_rec.datamodules import SequentialRecDataModule  # noqa: E402
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained  # noqa: E402
from lightning_rec.modules import SGRec  # noqa: E402
from lightning_rec.modules.sgrec import item_bids  # noqa: E402

MODES = ("business_only", "reward_sum", "adv_sum", "a2po")
METRICS = {"eCPM@10": "test/ecpm@10", "HR@10": "test/recall@10", "NDCG@10": "test/ndcg@10",
           "judge@10": "test/judge_score@10"}  # fmt: skip


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    return L.Trainer(**{**defaults, "num_sanity_val_steps": 0, **kwargs})


def load_evidence() -> EmbeddingAspectEvidence:
    from transformers import AutoModel, AutoTokenizer

    path = resolve_pretrained(MINILM_HUB_ID)
    return EmbeddingAspectEvidence(
        AutoModel.from_pretrained(path, use_safetensors=True),
        AutoTokenizer.from_pretrained(path),
        model_name=MINILM_HUB_ID,
    )


def build(data: SequentialRecDataModule, evidence, args: argparse.Namespace, scores: Path, **kwargs) -> SGRec:
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=args.hidden_size, max_len=50, num_layers=2,
                            num_heads=2, dropout=0.2)  # fmt: skip
    model = SGRec(encoder=encoder, score_cache_dir=str(scores), **kwargs)
    model.attach_evidence(evidence)
    return model


def run_seed(
    seed: int, data, evidence, args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, float]]:
    scores = workdir / "scores"
    L.seed_everything(seed, verbose=False)
    judge_stage = build(data, evidence, args, scores, stage="judge", learning_rate=args.judge_stage_lr)
    trainer(max_epochs=args.judge_epochs, check_val_every_n_epoch=1000).fit(judge_stage, data)
    results = {"judge stage (start)": trainer().test(judge_stage, data, verbose=False)[0]}
    start = workdir / f"judge-stage-{seed}"
    judge_stage.save_pretrained(start)
    for mode in MODES:
        clock = time.perf_counter()
        L.seed_everything(seed, verbose=False)
        policy = build(
            data, evidence, args, scores,
            stage="policy",
            pretrained=str(start),
            advantage_mode=mode,
            semantic_weight=args.reward_sum_weight if mode == "reward_sum" else 1.0,
            group_size=args.group_size,
            kl_coef=args.kl_coef,
            learning_rate=args.policy_lr,
        )  # fmt: skip
        trainer(max_epochs=args.policy_epochs, check_val_every_n_epoch=1000).fit(policy, data)
        results[mode] = trainer().test(policy, data, verbose=False)[0]
        figures = "  ".join(f"{name} {results[mode][key]:.4f}" for name, key in METRICS.items())
        print(f"  seed {seed} {mode:14s} {figures}  ({time.perf_counter() - clock:.0f} s)", flush=True)
    return results


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-users", type=int, default=1000)
    parser.add_argument("--num-items", type=int, default=500)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--judge-epochs", type=int, default=10)
    parser.add_argument("--policy-epochs", type=int, default=10)
    parser.add_argument("--judge-stage-lr", type=float, default=3e-3)
    parser.add_argument("--policy-lr", type=float, default=1e-3)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--kl-coef", type=float, default=0.0)
    parser.add_argument("--reward-sum-weight", type=float, default=None,
                        help="reward_sum's semantic weight (default: the catalogue's mean bid)")  # fmt: skip
    args = parser.parse_args()
    # One thread: the models are tiny, and on a shared machine two OpenMP threads mostly spin.
    torch.set_num_threads(1)

    begin = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        source = SyntheticReviews(num_users=args.num_users, num_items=args.num_items, cache_dir=str(workdir))
        data = SequentialRecDataModule(
            source=source, cache_dir=str(workdir), batch_size=64, eval_batch_size=512
        )
        bids = item_bids([None if p != p else float(p) for p in data.data.item_price.tolist()])
        if args.reward_sum_weight is None:
            args.reward_sum_weight = float(bids[1:].mean())
        print(f"data: {data.data.stats()}; mean bid {float(bids[1:].mean()):.2f}; reward_sum weight "
              f"{args.reward_sum_weight:.2f}", flush=True)  # fmt: skip
        evidence = load_evidence()
        runs = [run_seed(seed, data, evidence, args, workdir) for seed in args.seeds]

    rows = ["judge stage (start)", *MODES]
    print(f"\nS-GRec ablation, synthetic catalogue ({args.num_users} users, {args.num_items} items), "
          f"seeds {args.seeds}, mean ± std; wall time {time.perf_counter() - begin:.0f} s")  # fmt: skip
    print("| row | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for row in rows:
        cells = [mean_std([run[row][key] for run in runs]) for key in METRICS.values()]
        print(f"| {row} | " + " | ".join(cells) + " |")
    auc = [run["judge stage (start)"]["test/judge_pair_auc"] for run in runs]
    accuracy = [run["judge stage (start)"]["test/judge_pointwise_accuracy"] for run in runs]
    print(f"judge on held-out pairs: pairwise AUC {mean_std(auc)}, pointwise accuracy {mean_std(accuracy)}")

    print("\nPaired differences to business_only (same seed, same start), mean ± std:")
    for mode in MODES[1:]:
        cells = [
            f"{name} {mean_std([run[mode][key] - run['business_only'][key] for run in runs])}"
            for name, key in METRICS.items()
        ]
        print(f"  {mode:10s} " + "  ".join(cells))

    def values(row: str, key: str) -> list[float]:
        return [run[row][key] for run in runs]

    ecpm, judge = METRICS["eCPM@10"], METRICS["judge@10"]
    business_ecpm = values("business_only", ecpm)
    spread = statistics.stdev(business_ecpm) if len(runs) > 1 else 0.0
    a2po_ok = statistics.fmean(values("a2po", ecpm)) >= statistics.fmean(business_ecpm) - spread
    judge_ok = statistics.fmean(values("a2po", judge)) > statistics.fmean(values("business_only", judge))
    collapse = statistics.fmean(values("reward_sum", ecpm)) < statistics.fmean(business_ecpm) - spread
    print(f"\ntarget: A2PO eCPM >= business-only - seed std: {'met' if a2po_ok else 'MISSED'}; "
          f"A2PO judge score > business-only: {'met' if judge_ok else 'MISSED'}; "
          f"reward_sum eCPM < business-only - seed std: {'met' if collapse else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
