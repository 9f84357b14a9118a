"""Train RecBole 1.2.1's SASRec on its bundled ml-100k and write timings and metrics as JSON.

Runs INSIDE the RecBole venv built by ``bench/recbole_env.py``::

    .venv-recbole/bin/python bench/recbole_sasrec_runner.py --epochs 2 --out result.json

Protocol (the RecBole reference in the data spec, data.md): leave-one-out in time order, full
ranking, max length 50, d 64, 2 layers, 2 heads, dropout 0.5, CE loss, batch 256, lr 1e-3, early
stopping on valid NDCG@10 with patience 12, seed ``--seed`` (2020), CPU. Training goes through
RecBole's own ``Trainer.fit``, which keeps the best-validation checkpoint; ``_train_epoch`` and
``_valid_epoch`` are wrapped to time each epoch and record the valid NDCG@10. Test metrics come from
that best checkpoint, as in RecBole's ``run_recbole``. ``num_users`` and ``num_items`` exclude
RecBole's padding id 0. RecBole writes its tensorboard and checkpoint folders into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # before torch is imported

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed

CONVERGED_NOTE = (
    "stopped by the epoch limit, not by early stopping: converged RecBole quality must be taken from the "
    "reference in data.md (best valid NDCG@10 0.0737 near epoch 20 of 32; test NDCG@10 0.0637, "
    "Recall@10 0.1400, MRR@10 0.0409)"
)


def protocol(epochs: int, checkpoint_dir: str, seed: int = 2020) -> dict[str, Any]:
    """RecBole ``config_dict`` for the reference SASRec protocol on ml-100k."""
    return {
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "MAX_ITEM_LIST_LENGTH": 50,
        "hidden_size": 64,
        "inner_size": 256,
        "n_layers": 2,
        "n_heads": 2,
        "hidden_dropout_prob": 0.5,
        "attn_dropout_prob": 0.5,
        "loss_type": "CE",
        "train_batch_size": 256,
        "learning_rate": 1e-3,
        "metrics": ["Recall", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "stopping_step": 12,
        "epochs": epochs,
        "train_neg_sample_args": None,
        "seed": seed,
        "reproducibility": True,
        "use_gpu": False,
        "gpu_id": "",
        "device": "cpu",
        "show_progress": False,
        "metric_decimal_place": 6,
        "checkpoint_dir": checkpoint_dir,
    }


def run(epochs: int, data_path: Path | None = None, seed: int = 2020) -> dict[str, Any]:
    """Train and evaluate; return the result dictionary written as JSON."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # old pandas / torch.cuda.amp idioms
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="recbole-sasrec-") as workdir:
        os.chdir(workdir)  # RecBole writes ./log_tensorboard relative to the working directory
        try:
            return _train_and_test(epochs, data_path, Path(workdir), seed)
        finally:
            os.chdir(cwd)


def _train_and_test(epochs: int, data_path: Path | None, workdir: Path, seed: int) -> dict[str, Any]:
    """Build the data and model, train through ``Trainer.fit`` with timing wrappers, test."""
    argv, sys.argv = sys.argv, sys.argv[:1]  # RecBole's Config would parse "--key=value" CLI args
    try:
        config = Config("SASRec", "ml-100k", config_dict=protocol(epochs, str(workdir / "saved"), seed))
    finally:
        sys.argv = argv
    if data_path is not None:  # RecBole forces its bundled folder for "ml-100k"; honour the CLI
        config["data_path"] = str(Path(data_path) / "ml-100k")
    print(f"data: {config['data_path']}", flush=True)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = Trainer(config, model)

    epoch_seconds: list[float] = []
    valid_seconds: list[float] = []
    epoch_cpu_seconds: list[float] = []  # process CPU time: robust to other jobs sharing the machine
    valid_cpu_seconds: list[float] = []
    valid_ndcg: list[float] = []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        loss = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu)
        print(f"epoch {len(epoch_seconds)}: train {epoch_seconds[-1]:.1f} s, loss {loss:.4f}", flush=True)
        return loss

    def timed_valid(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        score, result = valid_epoch(*args, **kwargs)
        valid_seconds.append(time.perf_counter() - start)
        valid_cpu_seconds.append(time.process_time() - cpu)
        valid_ndcg.append(float(result["ndcg@10"]))
        print(f"epoch {len(valid_ndcg)}: valid NDCG@10 {valid_ndcg[-1]:.4f}", flush=True)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    # RecBole's own flow (``run_recbole``): keep the best validation checkpoint, test it.
    fit_start = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = time.perf_counter() - fit_start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    stopped_early = len(epoch_seconds) < epochs
    return {
        "epochs": len(epoch_seconds),
        "stopped_early": stopped_early,
        "epoch_seconds": epoch_seconds,
        "valid_seconds": valid_seconds,
        "epoch_cpu_seconds": epoch_cpu_seconds,
        "valid_cpu_seconds": valid_cpu_seconds,
        "valid_ndcg@10": valid_ndcg,
        "best_valid_ndcg@10": float(best_valid),
        "fit_seconds": fit_seconds,
        "test": {key: float(test[key]) for key in ("recall@10", "ndcg@10", "mrr@10")},
        "num_users": int(dataset.user_num) - 1,
        "num_items": int(dataset.item_num) - 1,
        "num_train_batches": len(train_data),
        **({} if stopped_early else {"note": CONVERGED_NOTE}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--data_path",
        type=Path,
        default=None,
        help="folder that holds ml-100k/ (default: the one inside the recbole package)",
    )
    args = parser.parse_args()
    out = args.out.absolute()
    result = run(args.epochs, args.data_path.absolute() if args.data_path else None, args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if "note" in result:
        print(f"note: {result['note']}", flush=True)
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
