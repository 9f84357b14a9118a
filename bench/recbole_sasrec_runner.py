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

Resuming (``--state-dir``): trained to its early stop, one seed can take 3 h, longer than a sitting.
With a state folder the runner writes an :class:`resume.EpochSnapshot` at the start of every train
epoch (model, optimizer, early-stopping counters, best validation result and RecBole's
best-validation checkpoint, the ``random`` / ``numpy`` / ``torch`` generators and the train loader's
own generator, the timing lists) and, started again with the same folder, continues from the last
snapshot: the loss and validation curves are those of an uninterrupted run, and the timings are the
sum of the epochs that completed (an epoch cut short is run again and counted once). The snapshot's
key holds the seed, the epoch budget, a digest of the data file, the protocol, the thread count and
the RecBole / torch versions; a folder of another run is refused. A run that finished leaves its
result beside the snapshot; starting it again returns that result, marked ``"finished_earlier"``,
without training. ``--stop-after-epochs N`` ends an invocation cleanly after N epochs (exit status
3), for splitting a run on purpose and for checking that a split run repeats an unsplit one.
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

import recbole
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.trainer import Trainer
from recbole.utils import init_seed
from resume import EpochSnapshot, capture_rng, file_digest, restore_rng

#: exit status of an invocation that stopped on ``--stop-after-epochs`` with its state saved.
STOPPED_FOR_RESUME = 3


class StopForResume(Exception):
    """Raised at an epoch start once ``stop_after_epochs`` epochs ran and the snapshot is written."""


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


def run(
    epochs: int,
    data_path: Path | None = None,
    seed: int = 2020,
    state_dir: Path | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate; return the result dictionary written as JSON.

    With ``state_dir``, resume from its snapshot if there is one and keep it up to date (module
    docstring). ``stop_after_epochs`` raises :class:`StopForResume` once that many epochs ran here.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)  # old pandas / torch.cuda.amp idioms
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="recbole-sasrec-") as workdir:
        os.chdir(workdir)  # RecBole writes ./log_tensorboard relative to the working directory
        try:
            return _train_and_test(epochs, data_path, Path(workdir), seed, state_dir, stop_after_epochs)
        finally:
            os.chdir(cwd)


def _train_and_test(
    epochs: int,
    data_path: Path | None,
    workdir: Path,
    seed: int,
    state_dir: Path | None,
    stop_after_epochs: int | None,
) -> dict[str, Any]:
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

    # Everything below that grows per epoch is part of the snapshot.
    log: dict[str, list[float]] = {
        "epoch_seconds": [],
        "valid_seconds": [],
        "epoch_cpu_seconds": [],  # process CPU time: robust to other jobs sharing the machine
        "valid_cpu_seconds": [],
        "valid_ndcg@10": [],
        "train_loss": [],
    }
    resumed_at: list[int] = []  # completed epochs at each resume
    fit_seconds_before = 0.0  # fit time of earlier invocations, up to their last snapshot
    snapshot = None
    pending_rng: dict[str, Any] | None = None
    if state_dir is not None:
        inter = Path(config["data_path"]) / "ml-100k.inter"
        snapshot = EpochSnapshot(
            Path(state_dir) / "recbole_sasrec.snapshot",
            key={
                "seed": seed,
                "epochs": epochs,
                "data_sha256": file_digest([inter]),
                "protocol": json.dumps(protocol(epochs, "", seed), sort_keys=True),
                "threads": torch.get_num_threads(),
                "recbole": recbole.__version__,
                "torch": torch.__version__,
            },
        )
        finished = snapshot.load_result()
        if finished is not None:
            print(f"finished earlier: {snapshot.result_path}", flush=True)
            return {**finished, "finished_earlier": True}
        state = snapshot.load()
        if state is not None:
            model.load_state_dict(state["model"])
            trainer.optimizer.load_state_dict(state["optimizer"])
            trainer.start_epoch = state["epoch"]
            trainer.cur_step = state["cur_step"]
            trainer.best_valid_score = state["best_valid_score"]
            trainer.best_valid_result = state["best_valid_result"]
            if state["best_checkpoint"] is not None:  # RecBole's file, read back by `evaluate`
                Path(trainer.saved_model_file).parent.mkdir(parents=True, exist_ok=True)
                Path(trainer.saved_model_file).write_bytes(state["best_checkpoint"])
            log = state["log"]
            resumed_at = [*state["resumed_at"], state["epoch"]]
            fit_seconds_before = state["fit_seconds"]
            pending_rng = state["rng"]
            print(f"resumed from {snapshot.path} at epoch {state['epoch'] + 1}", flush=True)
    first_epoch = trainer.start_epoch
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def save_snapshot(epoch_idx: int) -> None:
        best = Path(trainer.saved_model_file)
        snapshot.save(
            {
                "epoch": epoch_idx,
                "model": model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "cur_step": trainer.cur_step,
                "best_valid_score": trainer.best_valid_score,
                "best_valid_result": trainer.best_valid_result,
                "best_checkpoint": best.read_bytes() if best.exists() else None,
                "rng": capture_rng([train_data.generator]),
                "log": log,
                "resumed_at": resumed_at,
                "fit_seconds": fit_seconds_before + time.perf_counter() - fit_start,
            }
        )

    def timed_train(train_data_: Any, epoch_idx: int, *args: Any, **kwargs: Any) -> Any:
        nonlocal pending_rng
        if pending_rng is not None:  # resumed: the generators as they were at this epoch's start
            restore_rng(pending_rng, [train_data.generator])
            pending_rng = None
        elif snapshot is not None and epoch_idx > first_epoch:
            save_snapshot(epoch_idx)
            if stop_after_epochs is not None and epoch_idx - first_epoch >= stop_after_epochs:
                done = epoch_idx - first_epoch
                raise StopForResume(f"stopped after {done} epoch(s) here; state in {snapshot.path}")
        start, cpu = time.perf_counter(), time.process_time()
        loss = train_epoch(train_data_, epoch_idx, *args, **kwargs)
        log["epoch_seconds"].append(time.perf_counter() - start)
        log["epoch_cpu_seconds"].append(time.process_time() - cpu)
        log["train_loss"].append(float(loss))
        print(f"epoch {epoch_idx + 1}: train {log['epoch_seconds'][-1]:.1f} s, loss {loss:.4f}", flush=True)
        return loss

    def timed_valid(*args: Any, **kwargs: Any) -> Any:
        start, cpu = time.perf_counter(), time.process_time()
        score, result = valid_epoch(*args, **kwargs)
        log["valid_seconds"].append(time.perf_counter() - start)
        log["valid_cpu_seconds"].append(time.process_time() - cpu)
        log["valid_ndcg@10"].append(float(result["ndcg@10"]))
        print(f"epoch {len(log['valid_ndcg@10'])}: valid NDCG@10 {log['valid_ndcg@10'][-1]:.4f}", flush=True)
        return score, result

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    # RecBole's own flow (``run_recbole``): keep the best validation checkpoint, test it.
    fit_start = time.perf_counter()
    best_valid, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    fit_seconds = fit_seconds_before + time.perf_counter() - fit_start
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    stopped_early = len(log["epoch_seconds"]) < epochs
    result = {
        "epochs": len(log["epoch_seconds"]),
        "stopped_early": stopped_early,
        **log,
        "best_valid_ndcg@10": float(best_valid),
        "fit_seconds": fit_seconds,
        "resumed_at_epochs": resumed_at,
        "test": {key: float(test[key]) for key in ("recall@10", "ndcg@10", "mrr@10")},
        "num_users": int(dataset.user_num) - 1,
        "num_items": int(dataset.item_num) - 1,
        "num_train_batches": len(train_data),
        **({} if stopped_early else {"note": CONVERGED_NOTE}),
    }
    if snapshot is not None:
        snapshot.save_result(result)
    return result


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
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="folder for the resume snapshot: a later start with the same folder continues the run",
    )
    parser.add_argument(
        "--stop-after-epochs",
        type=int,
        default=None,
        help="end this invocation after N epochs with the state saved "
        f"(needs --state-dir; exit status {STOPPED_FOR_RESUME})",
    )
    args = parser.parse_args()
    if args.stop_after_epochs is not None and (args.state_dir is None or args.stop_after_epochs < 1):
        parser.error("--stop-after-epochs needs --state-dir and a value of at least 1")
    out = args.out.absolute()
    state_dir = args.state_dir.absolute() if args.state_dir else None
    try:
        result = run(
            args.epochs,
            args.data_path.absolute() if args.data_path else None,
            args.seed,
            state_dir,
            args.stop_after_epochs,
        )
    except StopForResume as stop:
        print(stop, flush=True)
        sys.exit(STOPPED_FOR_RESUME)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if "note" in result:
        print(f"note: {result['note']}", flush=True)
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
