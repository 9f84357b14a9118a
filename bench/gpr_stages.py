"""GPR (arXiv 2511.10138) on the synthetic catalogue: the tokenizer table, then MTP -> VAFT -> HEPO vs SASRec.

Two comparisons on the harness, both on the embedded synthetic catalogue (fixed: seed 0; the seed
changes initialisation and sampling only):

1. ``gpr_tokenizers``: RQ-KMeans, RQ-VAE and RQ-KMeans+ fitted on the MiniLM embeddings of the item
   titles (3 levels of 32 codes), with the paper's Table 1 metrics: collision rate (items sharing all
   codes) and code usage (share of codes used, per level), plus code perplexity and reconstruction
   error. No split: a tokenizer is fitted on, and measured over, the whole catalogue.
2. ``gpr_stages``: the three chained fits per seed (MTP, then VAFT from MTP's selected checkpoint,
   then HEPO from VAFT's), HEPO also decoded with value-guided beam pruning, HEPO's control (VAFT's
   loss alone for HEPO's epochs, from the same checkpoint), and SASRec on the same split. Test
   figures: the simulator's expected eCPM of the top-10 ads of an ad request (pCTR from the
   catalogue's ground-truth preference, bid = price; SASRec ranks the ads by its scores) and
   Recall/NDCG@10 of the held-out next item (GPR: constrained beam search, items outside the beam
   rank last; SASRec: full ranking).

Run from the repository root (``--quick`` for a smoke run):

    .venv/bin/python bench/gpr_stages.py --seeds 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from harness import Bench, Trial  # noqa: E402

from lightning_rec.blocks import (  # noqa: E402
    DiffusionHead,
    HeterogeneousHierarchicalDecoder,
    SemanticIdQuantizer,
)
from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.data import SyntheticReviews, item_text_embeddings  # noqa: E402
from lightning_rec.datamodules import SequentialRecDataModule  # noqa: E402
from lightning_rec.modules import GPR, SASRec  # noqa: E402
from lightning_rec.modules.gpr import ad_items  # noqa: E402
from lightning_rec.modules.sgrec import CatalogueSimulator, item_bids  # noqa: E402

#: row -> (method, dead-code re-seeding interval); the no-re-seeding row shows what re-seeding prevents.
TOKENIZERS = {
    "RQ-KMeans": ("rq_kmeans", 50),
    "RQ-VAE": ("rq_vae", 50),
    "RQ-VAE, no re-seeding": ("rq_vae", 0),
    "RQ-KMeans+": ("rq_kmeans_plus", 50),
}
STAGES = {
    "MTP": "mtp",
    "VAFT": "vaft",
    "VAFT, continued (HEPO's control)": "vaft-continued",
    "HEPO": "hepo",
    "HEPO + value-guided beam": "hepo",
}


def options(argv: list[str], quick: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-users", type=int, default=200 if quick else 600)
    parser.add_argument("--num-items", type=int, default=150 if quick else 300)
    parser.add_argument("--tokenizer-items", type=int, default=150 if quick else 1000)
    parser.add_argument("--max-len", type=int, default=20)
    parser.add_argument("--hidden-size", type=int, default=32)
    parser.add_argument("--codebook-size", type=int, default=32)
    parser.add_argument("--quantizer-steps", type=int, default=50 if quick else 300)
    parser.add_argument("--mtp-epochs", type=int, default=2 if quick else 10)
    parser.add_argument("--vaft-epochs", type=int, default=1 if quick else 2)
    parser.add_argument("--hepo-epochs", type=int, default=1 if quick else 2)
    parser.add_argument("--ppo-epochs", type=int, default=2, help="HEPO's PPO passes over each rollout")
    parser.add_argument("--sasrec-epochs", type=int, default=2 if quick else 10)
    parser.add_argument("--value-weight", type=float, default=0.5)
    parser.add_argument("--requests-per-window", type=int, default=4)
    parser.add_argument("--skip-tokenizers", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    return parser.parse_known_args(argv)[0]


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                    devices=1, num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def tokenizer_bench(args: argparse.Namespace, workdir: Path) -> None:
    bench = Bench(
        name="gpr_tokenizers",
        title="GPR semantic-ID tokenizers: RQ-KMeans vs RQ-VAE vs RQ-KMeans+ (collision rate, code usage)",
        protocol=(
            f"synthetic catalogue ({args.tokenizer_items} items, seed 0), all-MiniLM-L6-v2 embeddings of the "
            f"titles; 3 levels x {args.codebook_size} codes; metrics over every item"
        ),
        budget=(
            f"RQ-KMeans: 25 Lloyd iterations per level; RQ-VAE and RQ-KMeans+: {args.quantizer_steps} "
            "Adam steps, batch 256, lr 1e-3, dead codes re-seeded every 50 steps (in every row but RQ-VAE, "
            "no re-seeding)"
        ),
        selection="none (no tuning; one fit per seed)",
        primary="collision_rate",
        higher_is_better=False,
        baseline="RQ-KMeans",
    )
    source = SyntheticReviews(num_items=args.tokenizer_items, cache_dir=str(workdir))
    titles = [meta.title for meta in source.items()]
    embeddings = item_text_embeddings(titles)

    def trial(row: str, params: dict, seed: int) -> Trial:
        torch.manual_seed(seed)
        quantizer = SemanticIdQuantizer(
            codebook_size=args.codebook_size,
            method=params["method"],
            reseed_interval=params["reseed_interval"],
        )
        quantizer.fit(embeddings, steps=args.quantizer_steps, seed=seed)
        report = quantizer.report(embeddings)
        metrics = {
            "collision_rate": report.collision_rate,
            "code_usage": float(np.mean(report.code_usage)),
            **{f"code_usage_l{level + 1}": usage for level, usage in enumerate(report.code_usage)},
            "perplexity": float(np.mean(report.perplexity)),
            "reconstruction_error": report.reconstruction_error,
            "max_dedup_digit": float(report.max_dedup_digit),
        }
        return Trial(valid=metrics, test=lambda: metrics)

    rows = {
        name: {"method": method, "reseed_interval": interval}
        for name, (method, interval) in TOKENIZERS.items()
    }
    bench.run(rows=rows, trial=trial)


def stage_bench(args: argparse.Namespace, workdir: Path) -> None:
    bench = Bench(
        name="gpr_stages",
        title="GPR: MTP -> VAFT -> HEPO (value of ad requests) and constrained beam search vs SASRec",
        protocol=(
            f"synthetic catalogue ({args.num_users} users, {args.num_items} items, seed 0), 5-core, "
            f"leave-one-out, max_len {args.max_len}; ecpm@10: simulator's expected pCTR x bid of the top "
            "10 ads per test request (30% of items are ads, by hash); recall/ndcg@10 of the held-out item"
        ),
        budget=(
            f"MTP {args.mtp_epochs} epochs, then VAFT {args.vaft_epochs} and HEPO {args.hepo_epochs} epochs "
            f"from the previous stage's selected checkpoint ({args.requests_per_window} requests per "
            f"window; HEPO: {args.ppo_epochs} PPO epochs over each batch's rollout); "
            f"SASRec {args.sasrec_epochs} epochs; d {args.hidden_size}, batch 64"
        ),
        selection="per stage, the epoch with the best validation ecpm@10 (MTP and SASRec: ndcg@10)",
        primary="ecpm@10",
        baseline="MTP",
    )
    source = SyntheticReviews(num_users=args.num_users, num_items=args.num_items, cache_dir=str(workdir))
    data = SequentialRecDataModule(
        source=source, max_len=args.max_len, batch_size=64, eval_batch_size=256, cache_dir=str(workdir)
    )
    sequences = data.data
    bids = item_bids([None if np.isnan(p) else float(p) for p in sequences.item_price])
    is_ad = ad_items(sequences.item_ids, 0.3)
    ad_bids = torch.where(is_ad, bids, torch.zeros_like(bids))
    simulator = CatalogueSimulator(source.catalogue, sequences.item_ids, sequences.user_ids, ad_bids)

    def build(stage: str, pretrained: str | None, value_weight: float = 0.0) -> GPR:
        levels = [args.codebook_size] * 3 + [8]
        decoder = HeterogeneousHierarchicalDecoder(
            level_sizes=levels, hidden_size=args.hidden_size, max_len=args.max_len + 2, dropout=0.2,
            diffusion=DiffusionHead(hidden_size=args.hidden_size, num_steps=32, sampling_steps=4),
        )  # fmt: skip
        quantizer = SemanticIdQuantizer(codebook_size=args.codebook_size)
        return GPR(decoder=decoder, quantizer=quantizer, stage=stage, pretrained=pretrained,
                   quantizer_steps=args.quantizer_steps, value_weight=value_weight,
                   requests_per_window=args.requests_per_window, ppo_epochs=args.ppo_epochs,
                   learning_rate=2e-3 if stage == "mtp" else 5e-4, ks=(10,))  # fmt: skip

    @cache
    def fitted(stage: str, seed: int) -> str:
        """The selected checkpoint of ``stage`` for ``seed`` (each stage starts from the previous one's).

        "vaft-continued" is the control of HEPO: VAFT's loss alone for HEPO's epochs, from the same
        VAFT checkpoint, so that HEPO's gain is not mistaken for the gain of more training.
        """
        previous = {"vaft": "mtp", "hepo": "vaft", "vaft-continued": "vaft"}.get(stage)
        pretrained = fitted(previous, seed) if previous else None
        L.seed_everything(seed, verbose=False)
        model = build("vaft" if stage == "vaft-continued" else stage, pretrained)
        monitor = "val/ndcg@10" if stage == "mtp" else "val/ecpm@10"
        checkpoint = ModelCheckpoint(dirpath=workdir / f"{stage}-{seed}", monitor=monitor, mode="max",
                                     filename="best", enable_version_counter=False)  # fmt: skip
        epochs = {"mtp": args.mtp_epochs, "vaft": args.vaft_epochs}.get(stage, args.hepo_epochs)
        trainer(max_epochs=epochs, callbacks=[checkpoint]).fit(model, data)
        return checkpoint.best_model_path

    def evaluate(model, path: str, split: str) -> dict[str, float]:
        run = trainer().validate if split == "valid" else trainer().test
        results = run(model, data, ckpt_path=path, verbose=False)[0]
        prefix = "val/" if split == "valid" else "test/"
        return {name: float(results[prefix + name]) for name in ("ecpm@10", "recall@10", "ndcg@10")}

    def gpr_trial(row: str, seed: int) -> Trial:
        clock = time.perf_counter()
        stage = STAGES[row]
        path = fitted(stage, seed)
        model = build(
            "vaft" if stage == "vaft-continued" else stage,
            None,
            args.value_weight if row == "HEPO + value-guided beam" else 0.0,
        )
        valid = evaluate(model, path, "valid")
        return Trial(valid=valid, test=lambda: evaluate(model, path, "test"),
                     extra={"seconds": time.perf_counter() - clock})  # fmt: skip

    def sasrec_evaluate(model: SASRec, split: str) -> dict[str, float]:
        run = trainer().validate if split == "valid" else trainer().test
        results = run(model, data, verbose=False)[0]
        prefix = "val/" if split == "valid" else "test/"
        metrics = {name: float(results[prefix + name]) for name in ("recall@10", "ndcg@10")}
        loader = data.val_dataloader() if split == "valid" else data.test_dataloader()
        values = []
        model.eval()
        with torch.no_grad():
            for batch in loader:
                scores = model(batch.input_ids)
                scores[:, ~is_ad] = float("-inf")  # an ad request: SASRec ranks the ads
                top = scores.topk(10, dim=1).indices
                values.append(simulator.expected_reward(batch.user_index, batch.target, top).mean(dim=1))
        metrics["ecpm@10"] = float(torch.cat(values).mean())
        return metrics

    def sasrec_trial(seed: int) -> Trial:
        L.seed_everything(seed, verbose=False)
        encoder = SASRecEncoder(num_items=data.num_items, hidden_size=args.hidden_size, max_len=args.max_len,
                                num_layers=2, num_heads=2, dropout=0.2)  # fmt: skip
        model = SASRec(encoder=encoder, learning_rate=2e-3, ks=(10,))
        checkpoint = ModelCheckpoint(dirpath=workdir / f"sasrec-{seed}", monitor="val/ndcg@10", mode="max",
                                     filename="best", enable_version_counter=False)  # fmt: skip
        trainer(max_epochs=args.sasrec_epochs, callbacks=[checkpoint]).fit(model, data)
        best = SASRec.load_from_checkpoint(checkpoint.best_model_path, weights_only=False)
        valid = sasrec_evaluate(best, "valid")
        return Trial(valid=valid, test=lambda: sasrec_evaluate(best, "test"))

    def trial(row: str, params: dict, seed: int) -> Trial:
        return sasrec_trial(seed) if row == "SASRec" else gpr_trial(row, seed)

    rows = {name: {"stage": stage} for name, stage in STAGES.items()}
    rows["HEPO + value-guided beam"]["value_weight"] = args.value_weight
    rows["SASRec"] = {"model": "sasrec"}
    bench.run(rows=rows, trial=trial)


def main() -> None:
    # One thread: the models are tiny, and on a shared machine two OpenMP threads mostly spin.
    torch.set_num_threads(1)
    # The harness reads its own flags (--seeds, --quick, --rows, ...) from sys.argv; these are the rest.
    args = options(sys.argv[1:], quick="--quick" in sys.argv)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_tokenizers:
            tokenizer_bench(args, Path(tmp))
        if not args.skip_stages:
            stage_bench(args, Path(tmp))


if __name__ == "__main__":
    main()
