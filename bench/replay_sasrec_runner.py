"""Train RePlay 0.22's SASRec on RecBole's ml-100k and write timings and metrics as JSON.

Runs INSIDE RePlay's own venv (``replay-rec[torch]`` 0.22, torch 2.13, lightning 2.6; see data.md)::

    OMP_NUM_THREADS=1 .venv-replay/bin/python bench/replay_sasrec_runner.py --epochs 200 --out result.json

Protocol (RecBole's, as in ``bench/recbole_sasrec_runner.py``; data.md): every interaction of RecBole's
``ml-100k.inter`` (no rating filter, no k-core), each user's items in timestamp order with ties kept in
file order, leave-one-out (last item = test, second to last = validation, the rest = training), max history
50, full ranking over all items with NO masking of seen items. Model: d 64, 2 layers, 2 heads, feed-forward
256 (RecBole's ``inner_size``; RePlay's ``from_params`` defaults to d), dropout 0.5, full-softmax CE, Adam
lr 1e-3 with torch's default betas (RecBole's; RePlay's factory defaults to (0.9, 0.98)), batch 256.

Training is RePlay's own Lightning stack: ``replay.nn.sequential.SasRec.from_params`` wrapped in
``replay.nn.lightning.LightningModule``, data from ``replay.data.nn.ParquetModule`` with
``make_default_sasrec_transforms``, ``lightning.Trainer.fit``. RePlay's training unit (checked in its
source): one parquet row per user, read as a fixed-shape window. ``raw_get_mask``
(``replay/data/nn/parquet/impl/indexing.py``) keeps the LAST ``shape`` items of a row and left-pads
shorter ones, and ``NextTokenTransform`` (``replay/nn/transform/next_token.py``) shifts by one, so with
shape 51 each epoch trains on one window per user (the last 51 training items: 50 inputs, a CE loss at every
position), 943 windows = 4 batches. Earlier training pairs of users with more than 51 training items are
never seen; that is RePlay's design, kept here.

Validation and test: the last 50 items before the target, one target per user. NDCG@10 is computed here
from the full score matrix (``rank`` = number of real items scoring strictly higher than the target; the
padding row is not among RePlay's logits), and RePlay's own ``ComputeMetricsCallback`` (top-k over the same
logits, no postprocessor, so no ``SeenItemsFilter``) runs alongside as a cross-check. Early stopping:
Lightning's ``EarlyStopping`` on this NDCG@10, patience 12 (it stops after 12 epochs without a strict
improvement; RecBole stops after 13 and counts ties as improvements). Test metrics are those of the epoch
with the best validation NDCG@10 (its weights are kept in memory).

Order differs from RecBole's on a few users: RecBole 1.2.1's ``ml-100k.yaml`` sets ``normalize_all: True``,
so it sorts on min-max normalised timestamps cast to float32 (about 1 s resolution), which turns
timestamps a second apart into ties kept in file order. Checked against RecBole's own split: this exact
order gives the same valid/test targets for 938/939 of 943 users and the same 50-item histories for 905/906;
the float32 order reproduces RecBole on all 943. A copy of the file pre-sorted by (user, timestamp, file
position), given to both runners, makes RecBole's split identical to this one (943/943).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping
from replay.data import FeatureHint, FeatureSource, FeatureType
from replay.data.nn import ParquetModule, TensorFeatureInfo, TensorFeatureSource, TensorSchema
from replay.nn.lightning import LightningModule
from replay.nn.lightning.callback import ComputeMetricsCallback
from replay.nn.lightning.optimizer import OptimizerFactory
from replay.nn.sequential import SasRec
from replay.nn.transform.template import make_default_sasrec_transforms

MAX_LEN = 50
BATCH_SIZE = 256
PATIENCE = 12
K = 10
MONITOR = "valid_ndcg@10"
TRAINING_UNIT = (
    "one window per user per epoch: the last max_len + 1 = 51 training items (RePlay's ParquetDataset keeps "
    "the last `shape` items of a row, NextTokenTransform shifts by one; CE at every position)"
)


def load_sequences(data_path: Path) -> tuple[list[list[int]], int]:
    """Read ``ml-100k/ml-100k.inter``; return each user's item ids in time order and the item count.

    Ties in timestamp keep the file order (the file position is the last sort key). Item ids are
    ``0 .. num_items - 1`` in order of first appearance; RePlay's padding id is ``num_items``.
    """
    inter = data_path / "ml-100k" / "ml-100k.inter"
    if not inter.is_file():
        msg = f"expected RecBole's atomic file at {inter} (pass --data_path, the folder holding ml-100k/)"
        raise FileNotFoundError(msg)
    frame = pd.read_csv(inter, sep="\t", dtype={"user_id:token": str, "item_id:token": str})
    frame.columns = [name.split(":")[0] for name in frame.columns]
    frame["position"] = np.arange(len(frame))
    frame["item"] = pd.factorize(frame["item_id"])[0]
    frame = frame.sort_values(["user_id", "timestamp", "position"])
    sequences = [group.tolist() for _, group in frame.groupby("user_id", sort=True)["item"]]
    return sequences, int(frame["item"].max()) + 1


def write_splits(sequences: list[list[int]], folder: Path) -> dict[str, Path]:
    """Leave-one-out parquet files: a training row per user, and history + target rows for valid/test.

    Rows hold whole sequences; ``ParquetModule``'s metadata shapes cut them to the last 51 (train) or 50
    (valid, test) items.
    """
    paths = {name: folder / f"{name}.parquet" for name in ("train", "validate", "test")}
    pd.DataFrame({"item_id": [seq[:-2] for seq in sequences]}).to_parquet(paths["train"])
    for name, end in (("validate", -2), ("test", -1)):
        rows = {
            "item_id": [seq[:end] for seq in sequences],
            "ground_truth": [[seq[end]] for seq in sequences],
        }
        pd.DataFrame(rows).to_parquet(paths[name])
    return paths


class ProtocolCallback(lightning.Callback):
    """Per-epoch timings, unmasked full-ranking metrics from the score matrix, best-epoch weights.

    ``on_validation_start`` ends an epoch's training time (Lightning validates inside the training epoch);
    the metric is logged as ``valid_ndcg@10`` for ``EarlyStopping``.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.valid_seconds: list[float] = []
        self.epoch_cpu_seconds: list[float] = []
        self.valid_cpu_seconds: list[float] = []
        self.wall_seconds: list[float] = []
        self.valid_ndcg: list[float] = []
        self.train_samples: list[int] = []
        self.train_batches: list[int] = []
        self.best_ndcg = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.test: dict[str, float] = {}
        self._ranks: list[torch.Tensor] = []
        self._ties = 0

    def on_fit_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._train_start, self._train_cpu = time.perf_counter(), time.process_time()
        self.train_samples.append(0)
        self.train_batches.append(0)

    def on_train_batch_end(
        self, trainer: lightning.Trainer, pl_module: Any, outputs: Any, batch: Any, i: int
    ) -> None:
        self.train_samples[-1] += int(batch["padding_mask"].shape[0])
        self.train_batches[-1] += 1

    def on_validation_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._train_start)
        self.epoch_cpu_seconds.append(time.process_time() - self._train_cpu)
        self._valid_start, self._valid_cpu = time.perf_counter(), time.process_time()

    def _reset(self) -> None:
        self._ranks, self._ties = [], 0

    def on_validation_epoch_start(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        self._reset()

    def on_test_epoch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self._reset()

    def _add(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """Rank each row's target: the number of real items scoring strictly above it. (b n), (b 1) -> (b)."""
        scores = outputs["logits"].detach()
        if not torch.isfinite(scores).all():  # a NaN scores as rank 0 (a hit): see data.md's pitfall
            msg = "RePlay's SasRec returned non-finite logits; a NaN target would count as a hit"
            raise FloatingPointError(msg)
        target = batch["ground_truth"][:, 0].long()
        target_score = scores.gather(1, target[:, None])
        self._ranks.append((scores > target_score).sum(1))
        self._ties += int(((scores == target_score).sum(1) > 1).sum())

    def on_validation_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int, d: int = 0
    ) -> None:
        self._add(outputs, batch)

    def on_test_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, i: int, d: int = 0
    ) -> None:
        self._add(outputs, batch)

    def _metrics(self) -> dict[str, float]:
        """NDCG@10 = 1/log2(rank + 2), Recall@10 = HR@10, MRR@10 = 1/(rank + 1), each 0 past rank 9."""
        rank = torch.cat(self._ranks).double()
        hit = rank < K
        return {
            "ndcg@10": float(torch.where(hit, 1 / torch.log2(rank + 2), 0).mean()),
            "recall@10": float(hit.double().mean()),
            "mrr@10": float(torch.where(hit, 1 / (rank + 1), 0).mean()),
            "users": float(rank.numel()),
            "tied_targets": float(self._ties),
        }

    def on_validation_epoch_end(
        self, trainer: lightning.Trainer, pl_module: lightning.LightningModule
    ) -> None:
        ndcg = self._metrics()["ndcg@10"]
        pl_module.log(MONITOR, ndcg)
        self.valid_ndcg.append(ndcg)
        if ndcg > self.best_ndcg:  # strict, as EarlyStopping counts improvements
            self.best_ndcg, self.best_epoch = ndcg, len(self.valid_ndcg)
            self.best_state = copy.deepcopy(pl_module.state_dict())

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.valid_seconds.append(time.perf_counter() - self._valid_start)
        self.valid_cpu_seconds.append(time.process_time() - self._valid_cpu)
        self.wall_seconds.append(time.perf_counter() - self._fit_start)
        print(
            f"epoch {len(self.valid_ndcg)}: train {self.epoch_seconds[-1]:.2f} s"
            f" (CPU {self.epoch_cpu_seconds[-1]:.2f}), valid {self.valid_seconds[-1]:.2f} s"
            f" (CPU {self.valid_cpu_seconds[-1]:.2f}), valid NDCG@10 {self.valid_ndcg[-1]:.4f},"
            f" wall {self.wall_seconds[-1]:.1f} s",
            flush=True,
        )

    def on_test_epoch_end(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.test = self._metrics()


def build_model(num_items: int, seed: int) -> tuple[LightningModule, TensorSchema]:
    """RePlay's SasRec (its standard blocks and full CE) at RecBole's size, in RePlay's LightningModule."""
    schema = TensorSchema(
        TensorFeatureInfo(
            name="item_id",
            feature_type=FeatureType.CATEGORICAL,
            is_seq=True,
            feature_hint=FeatureHint.ITEM_ID,
            feature_sources=[TensorFeatureSource(FeatureSource.INTERACTIONS, "item_id")],
            cardinality=num_items,
            padding_value=num_items,  # the value RePlay expects: its logits then cover exactly the real items
            embedding_dim=64,
        )
    )
    lightning.seed_everything(seed, verbose=False)
    sasrec = SasRec.from_params(
        schema,
        embedding_dim=64,
        num_heads=2,
        num_blocks=2,
        max_sequence_length=MAX_LEN,
        dropout=0.5,
        hidden_dim=256,
    )
    optimizer = OptimizerFactory(optimizer="adam", learning_rate=1e-3, betas=(0.9, 0.999))
    return LightningModule(sasrec, optimizer_factory=optimizer), schema


def run(epochs: int, data_path: Path, seed: int = 2020) -> dict[str, Any]:
    """Train and evaluate; return the result dictionary written as JSON."""
    warnings.filterwarnings(
        "ignore", message=".*(partition|does not have many workers|paths aren't provided).*"
    )
    sequences, num_items = load_sequences(data_path)
    print(f"data: {data_path / 'ml-100k'}: {len(sequences)} users, {num_items} items", flush=True)
    module, schema = build_model(num_items, seed)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="replay-sasrec-") as workdir:
        paths = write_splits(sequences, Path(workdir))
        item_meta = {"padding": num_items}
        target_meta = {"shape": 1, "padding": -1}
        data = ParquetModule(
            batch_size=BATCH_SIZE,
            metadata={
                "train": {"item_id": {"shape": MAX_LEN + 1, **item_meta}},
                "validate": {"item_id": {"shape": MAX_LEN, **item_meta}, "ground_truth": target_meta},
                "test": {"item_id": {"shape": MAX_LEN, **item_meta}, "ground_truth": target_meta},
            },
            transforms=make_default_sasrec_transforms(schema),
            config={
                "train": {"generator": torch.Generator().manual_seed(seed), "device": cpu},
                "validate": {"device": cpu},
                "test": {"device": cpu},
            },
            train_path=str(paths["train"]),
            validate_path=str(paths["validate"]),
            test_path=str(paths["test"]),
        )
        protocol = ProtocolCallback()
        replay_metrics = ComputeMetricsCallback(metrics=["ndcg", "recall", "mrr"], ks=[K], verbose=False)
        trainer = lightning.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[
                protocol,
                replay_metrics,
                EarlyStopping(monitor=MONITOR, mode="max", patience=PATIENCE),
            ],
        )
        fit_start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        fit_seconds = time.perf_counter() - fit_start
        module.load_state_dict(protocol.best_state)
        trainer.test(module, datamodule=data, verbose=False)
    replay_valid = replay_metrics.get_metrics("validate")
    replay_test = next(iter(replay_metrics.get_metrics("test").values()))
    return {
        "epochs": len(protocol.valid_ndcg),
        "epoch_seconds": protocol.epoch_seconds,
        "valid_seconds": protocol.valid_seconds,
        # process CPU time: less sensitive than wall time to the load of a shared machine
        "epoch_cpu_seconds": protocol.epoch_cpu_seconds,
        "valid_cpu_seconds": protocol.valid_cpu_seconds,
        "wall_seconds": protocol.wall_seconds,
        "valid_ndcg@10": protocol.valid_ndcg,
        "best_valid_ndcg@10": protocol.best_ndcg,
        "best_epoch": protocol.best_epoch,
        "fit_seconds": fit_seconds,
        "test": {key: protocol.test[key] for key in ("recall@10", "ndcg@10", "mrr@10")},
        "test_tied_targets": int(protocol.test["tied_targets"]),
        "replay_metrics": {  # RePlay's ComputeMetricsCallback on the same logits (top-k, no postprocessor)
            "valid_ndcg@10": [replay_valid[epoch]["ndcg@10"] for epoch in sorted(replay_valid)],
            "test": {key: replay_test[key] for key in ("recall@10", "ndcg@10", "mrr@10")},
        },
        "num_users": len(sequences),
        "num_items": num_items,
        "num_train_samples": protocol.train_samples[0],
        "num_train_batches": protocol.train_batches[0],
        "training_unit": TRAINING_UNIT,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200, help="max epochs (early stopping, patience 12)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--data_path",
        type=Path,
        required=True,
        help="folder that holds ml-100k/ml-100k.inter (e.g. recbole/dataset_example in the RecBole venv)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread, like the other peers of the benchmark
    torch.set_num_interop_threads(1)
    out = args.out.absolute()
    result = run(args.epochs, args.data_path.absolute(), args.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({key: value for key, value in result.items() if not isinstance(value, list)}, indent=2))


if __name__ == "__main__":
    main()
