"""Pretrain the catalogue LM once and compare its held-out perplexity with n-gram baselines.

    python bench/catalogue_lm.py            # configs/catalogue_lm/synthetic.yaml (about 15 min, 1 thread)
    python bench/catalogue_lm.py --quick    # configs/catalogue_lm/tiny.yaml (seconds)

Writes bench/results/catalogue_lm.json: the LM's validation and test perplexity, wall-clock time,
parameter count, and the perplexity of two baselines on the very same next-token predictions
(every real token of a packed block but its first, as the LM is scored):

- unigram: token frequencies of the training blocks, add-one smoothed;
- bigram: ``λ P(w | previous) + (1 - λ) P_unigram(w)`` (Jelinek-Mercer), ``λ`` chosen on validation.

The target, fixed before the run: test perplexity at most 3/4 of the bigram's. Titles, categories and
the rationale format are mostly local structure that a bigram already captures; what only a
sequence model can add is memory over the document (a user's categories, the title to repeat in the
rationale, the intent behind the next item), and 25% fewer effective choices per token is a gain a
bigram cannot fake. The saved folder is then reloaded with plain ``transformers`` and its logits
compared with the trained module's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from lightning_rec.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.75


def _next_token_pairs(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) token pairs of every real prediction inside the packed blocks."""
    previous, following = blocks[:, :-1].reshape(-1), blocks[:, 1:].reshape(-1)
    real = following >= 0
    return previous[real], following[real]


def ngram_baselines(blocks: dict[str, np.ndarray], vocab_size: int) -> dict[str, dict[str, float]]:
    train_previous, train_next = _next_token_pairs(blocks["train"])
    unigram = (np.bincount(train_next, minlength=vocab_size) + 1.0) / (len(train_next) + vocab_size)
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (train_previous, train_next), 1.0)
    conditional = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)

    def perplexity(split: str, weight: float) -> float:
        previous, following = _next_token_pairs(blocks[split])
        probability = weight * conditional[previous, following] + (1.0 - weight) * unigram[following]
        return math.exp(-np.log(probability).mean())

    best = min((*np.linspace(0.05, 0.95, 19), 0.98, 0.99), key=lambda weight: perplexity("valid", weight))
    return {
        "unigram": {"valid": perplexity("valid", 0.0), "test": perplexity("test", 0.0)},
        "bigram": {
            "valid": perplexity("valid", best),
            "test": perplexity("test", best),
            "lambda": float(best),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny config (a smoke run, not a result)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ROOT / "configs" / "catalogue_lm" / ("tiny.yaml" if args.quick else "synthetic.yaml")

    start = time.perf_counter()
    cli = run_cli(["fit", "--config", str(config)])
    fit_seconds = time.perf_counter() - start
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    valid = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    test = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    export = Path(model.export_dir)
    model.save_pretrained(export)  # again, so the card carries the test perplexity

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(export, use_safetensors=True).eval()
    probe = torch.from_numpy(np.clip(datamodule.blocks["test"][:4], 0, None))
    with torch.no_grad():
        difference = (loaded(probe).logits - model.model.eval()(probe).logits).abs().max().item()

    baselines = ngram_baselines(datamodule.blocks, len(datamodule.tokenizer))
    target = TARGET_RATIO * baselines["bigram"]["test"]
    result = {
        "name": "catalogue_lm",
        "title": "Catalogue LM: held-out perplexity vs n-gram baselines",
        "command": f"python bench/catalogue_lm.py{' --quick' if args.quick else ''}",
        "config": str(config.relative_to(ROOT)),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), shared with other jobs",
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "parameters": model.num_parameters,
        "tokens": datamodule.token_counts(),
        "vocabulary": len(datamodule.tokenizer),
        "steps": trainer.global_step,
        "fit_seconds": fit_seconds,
        "perplexity": {
            "catalogue_lm": {"valid": valid["val/perplexity"], "test": test["test/perplexity"]},
            **baselines,
        },
        "target": {"rule": f"test perplexity <= {TARGET_RATIO} x bigram", "value": target},
        "target_met": test["test/perplexity"] <= target,
        "reload_max_abs_logit_difference": difference,
        "export_dir": str(export),
    }
    out = ROOT / "bench" / "results" / ("catalogue_lm_quick.json" if args.quick else "catalogue_lm.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("perplexity", "target", "target_met", "fit_seconds")}, indent=2))


if __name__ == "__main__":
    main()
