"""Model cards: ``lightning_rec/hub_cards/<method>.md`` Jinja templates rendered with the run's metrics.

The metrics go into ``ModelCardData.eval_results`` (one ``EvalResult`` per metric), so the Hub shows
them as a model index, and into a results table in the card body. They come from the run's own test
metrics (``SequentialRecommender.test_results``), never typed in.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["card_template", "render_model_card"]


def card_template(method: str) -> str:
    """The template text of ``method`` (``sasrec`` -> ``lightning_rec/hub_cards/sasrec.md``)."""
    template = resources.files("lightning_rec") / "hub_cards" / f"{method}.md"
    if not template.is_file():
        raise FileNotFoundError(f"no model-card template lightning_rec/hub_cards/{method}.md")
    return template.read_text(encoding="utf-8")


def render_model_card(
    template: str,
    config: dict[str, Any],
    metrics: dict[str, float] | None = None,
    dataset_name: str = "unknown",
    repo_id: str = "<org>/<name>",
    base_model: str | None = None,
    **template_kwargs: Any,
) -> ModelCard:
    """Render ``lightning_rec/hub_cards/<template>.md``; ``metrics`` (``{"test/ndcg@10": 0.31}``) become
    the card's eval results and its results table."""
    metrics = metrics or {}
    results = [
        EvalResult(
            task_type="recommendation",
            task_name="Next-item recommendation",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=name.split("/")[-1],
            metric_name=name,
            metric_value=float(value),
        )
        for name, value in sorted(metrics.items())
    ]
    card_data = ModelCardData(
        library_name="lightning-rec",
        license="apache-2.0",
        tags=["lightning-rec", "recommendation", template],
        datasets=[dataset_name] if dataset_name != "unknown" else None,
        metrics=sorted({r.metric_type for r in results}) or None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
    )
    table = "\n".join(
        ["| metric | value |", "|---|---|", *(f"| {r.metric_name} | {r.metric_value:.4f} |" for r in results)]
    )
    return ModelCard.from_template(
        card_data,
        template_str=card_template(template),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        dataset_name=dataset_name,
        results_table=table if results else "No test metrics were recorded for this checkpoint.",
        config_json=json.dumps(config, indent=2),
        **template_kwargs,
    )
