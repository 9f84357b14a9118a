"""ReasoningToRank: SFT then RL on a tiny random Qwen2, teacher rationales from the catalogue or a file."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from lightning_rec.agents import HFCausalLM
from lightning_rec.data import DataFormatError
from lightning_rec.data.catalogue_corpus import rationale_prompt, render_catalogue_corpus, train_bpe_tokenizer
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import CandidateRankingDataModule
from lightning_rec.metrics import CandidateRankingMetrics
from lightning_rec.modules import ReasoningToRank

CANDIDATES = 5
#: E[NDCG] of a uniformly random ranking of one positive among 5: mean of 1 / log2(rank + 2).
RANDOM_NDCG = sum(1 / math.log2(rank + 2) for rank in range(CANDIDATES)) / CANDIDATES


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SyntheticReviews:
    return SyntheticReviews(
        num_users=150,
        num_items=80,
        num_categories=5,
        mean_length=12,
        cache_dir=str(tmp_path_factory.mktemp("c")),
    )


@pytest.fixture(scope="module")
def tokenizer(source):
    return train_bpe_tokenizer(render_catalogue_corpus(source.catalogue, max_history=3).train, vocab_size=400)


def tiny_llm(tokenizer, seed: int = 0, adapter: str | None = None) -> HFCausalLM:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "qwen2", vocab_size=448, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return HFCausalLM(model, tokenizer=tokenizer, batch_size=64, adapter=adapter, r=2, num_blocks=2)


def lists(source, **options) -> CandidateRankingDataModule:
    options = {"teacher_rationales": "catalogue", "batch_size": 8} | options
    return CandidateRankingDataModule(
        source=source, cache_dir="", max_len=10, num_candidates=CANDIDATES, history_titles=3,
        train_on="candidate_lists", eval_batch_size=64, **options,
    )  # fmt: skip


def fit(model: ReasoningToRank, data: CandidateRankingDataModule, steps: int) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, data)
    return trainer


def teacher_forced_ndcg(model: ReasoningToRank, data: CandidateRankingDataModule) -> float:
    """NDCG@10 over every training list, each candidate scored after its teacher rationale."""
    metrics = CandidateRankingMetrics()
    tokenizer = model.llm.tokenizer
    for batch in data._candidates("train"):
        rationales = [
            tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for row in batch.rationales
            for r in row
        ]
        with torch.no_grad():
            _, scores = model._forward(model.llm.model, model._pad(model.prompt_ids(batch), rationales))
        metrics.update(scores.view(len(batch), -1), batch.positive_index)
    return float(metrics.compute()["ndcg@10"])


def teacher_log_prob(llm: HFCausalLM, batch) -> float:
    """Mean summed log-prob of the batch's teacher rationales (the runtime's own scoring)."""
    prompts = [
        rationale_prompt(history, title)
        for history, titles in zip(batch.history_titles, batch.candidate_titles, strict=True)
        for title in titles
    ]
    with torch.no_grad():
        return float(llm.score(prompts, [r for row in batch.rationales for r in row]).mean())


def test_sft_then_rl_learns_to_rank_and_exports(source, tokenizer, tmp_path):
    data = lists(source)
    llm = tiny_llm(tokenizer)
    batch = next(iter(data._candidates("train")))
    before = teacher_log_prob(llm, batch)

    sft = ReasoningToRank(
        llm, stage="sft", max_rationale_tokens=12, learning_rate=3e-3, head_learning_rate=3e-2
    )
    fit(sft, data, steps=30)
    # SFT made the teacher's rationales far more likely, and the head ranks better than chance.
    assert teacher_log_prob(llm, batch) < 0.5 * before < 0
    # The head learnt to read a rationale's verdict: far better than chance with the teacher's.
    assert teacher_forced_ndcg(sft, data) > RANDOM_NDCG + 0.15

    sft_weights = {name: value.clone() for name, value in llm.model.state_dict().items()}
    rl = ReasoningToRank(
        llm, stage="rl", score_head=sft.score_head, max_rationale_tokens=12, learning_rate=1e-3,
        head_learning_rate=1e-2, kl_coef=0.05, export_dir=str(tmp_path / "rl"),
    )  # fmt: skip
    trainer = fit(rl, data, steps=6)
    # The KL reference is the SFT policy, frozen; the policy moved away from it.
    reference = rl._reference.state_dict()
    assert all(torch.equal(reference[name], value) for name, value in sft_weights.items())
    assert not all(torch.equal(value, sft_weights[name]) for name, value in llm.model.state_dict().items())
    assert not any(p.requires_grad for p in rl._reference.parameters())
    logged = trainer.callback_metrics
    assert 0.0 <= float(logged["train/reward"]) <= 1.0 and float(logged["train/ppo_kl"]) >= 0.0
    # One PPO pass, one minibatch: the re-evaluated policy is the behaviour policy, ratio 1.
    assert float(logged["train/ppo_ratio_max"]) == pytest.approx(1.0, abs=1e-4)
    assert teacher_forced_ndcg(rl, data) > RANDOM_NDCG + 0.15

    # The export reloads into a fresh model of the same shape with identical scores.
    reloaded = ReasoningToRank(
        tiny_llm(tokenizer, seed=1), init_from=str(tmp_path / "rl"), max_rationale_tokens=12
    )
    with torch.no_grad():
        torch.testing.assert_close(reloaded.score(batch)[0], rl.score(batch)[0])
    assert (tmp_path / "rl" / "README.md").read_text().count("Reasoning to Rank") >= 1


def test_teacher_forced_log_probs_match_the_sampled_ones(source, tokenizer):
    """The scoring pass (left-padded prompts, right-padded rationales, one forward) reproduces the
    runtime's log-probs read off during KV-cached sampling: PPO's ratios start at 1."""
    model = ReasoningToRank(tiny_llm(tokenizer), max_rationale_tokens=6)
    batch = next(iter(lists(source)._candidates("train")))
    texts = [
        rationale_prompt(history, title)
        for history, titles in zip(batch.history_titles, batch.candidate_titles, strict=True)
        for title in titles
    ]
    with torch.no_grad():
        generation = model.llm.generate(texts, max_new_tokens=6, temperature=1.0)
        log_probs, scores = model._forward(
            model.llm.model, model._pad(model.prompt_ids(batch), generation.token_ids)
        )
    width = generation.logprobs.shape[1]
    torch.testing.assert_close(log_probs[:, :width], generation.logprobs, atol=1e-4, rtol=1e-4)
    assert scores.shape == (len(batch) * CANDIDATES,)


@pytest.mark.parametrize("adapter", ["smoa", "lora"])
def test_adapters_train_only_their_factors_and_the_head(source, tokenizer, adapter):
    model = ReasoningToRank(tiny_llm(tokenizer, adapter=adapter), max_rationale_tokens=4, learning_rate=1e-2)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    fit(model, lists(source), steps=2)
    changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
    factors = {name for name in changed if "lora_" in name}
    assert factors and changed == factors | {"score_head.linear.weight", "score_head.linear.bias"}


def test_push_to_hub_then_init_from_the_repo(source, tokenizer, local_hub):
    model = ReasoningToRank(tiny_llm(tokenizer), max_rationale_tokens=3)
    torch.nn.init.normal_(model.score_head.linear.weight)
    model.push_to_hub("org/r2rank-tiny", token="test-token")
    pulled = ReasoningToRank(tiny_llm(tokenizer, seed=1), init_from="org/r2rank-tiny", max_rationale_tokens=3)
    batch = next(iter(lists(source)._candidates("train")))
    torch.testing.assert_close(pulled.score(batch)[0], model.score(batch)[0])


def test_rl_without_reasoning_generates_nothing_and_zscore_credit_runs(source, tokenizer):
    data = lists(source, teacher_rationales=None)
    plain = ReasoningToRank(tiny_llm(tokenizer), stage="rl", reasoning=False, head_learning_rate=1e-2)
    trainer = fit(plain, data, steps=3)
    assert "train/reward" in trainer.callback_metrics
    batch = next(iter(data._candidates("train")))
    scores, tokens = plain.score(batch)
    assert scores.shape == (len(batch), CANDIDATES) and torch.equal(tokens, torch.zeros(len(batch)))

    grouped = ReasoningToRank(
        tiny_llm(tokenizer),
        stage="rl",
        credit="zscore",
        rationale_samples=2,
        max_rationale_tokens=4,
        kl_coef=0.0,
    )
    logged = fit(grouped, data, steps=2).callback_metrics
    assert 0.0 < float(logged["train/rationale_tokens"]) <= 4.0
    with pytest.raises(ValueError, match="rationale_samples >= 2"):
        ReasoningToRank(tiny_llm(tokenizer), stage="rl", credit="zscore")


def test_catalogue_teacher_round_trips_through_a_user_file(source, tmp_path):
    data = lists(source)
    rationales = data.training_rationales()
    candidates, positive_index = data.candidate_lists("train")
    _, users = data.query_positions("train")
    # Each rationale judges its own candidate; "fits" exactly when the candidate is of the stated category.
    stated = rationales[0][0].split(",")[0].removeprefix(" recently into ")
    for item, rationale in zip(candidates[0].tolist(), rationales[0], strict=True):
        assert data.item_table.title[item] in rationale
        assert rationale.endswith(" fits.") == (data.item_table.category[item] == stated)
    # The positives fit far more often than the negatives (the teacher carries signal).
    fits = np.array([[r.endswith(" fits.") for r in row] for row in rationales])
    positive = fits[np.arange(len(fits)), positive_index]
    assert positive.mean() > 0.5 > 0.25 > fits.mean()

    path = tmp_path / "teacher.jsonl"
    with path.open("w") as handle:
        for user, listed, row in zip(users.tolist(), candidates, rationales, strict=True):
            for item, rationale in zip(listed.tolist(), row, strict=True):
                record = {
                    "user_id": data.user_ids[user],
                    "item_id": data.data.item_ids[item],
                    "rationale": rationale,
                }
                handle.write(json.dumps(record) + "\n")
    assert lists(source, teacher_rationales=str(path)).training_rationales() == rationales


def test_bad_teacher_files_name_the_file_line_and_field(source, tokenizer, tmp_path):
    data = lists(source)
    user, item = data.user_ids[0], data.data.item_ids[1]
    missing_field = tmp_path / "missing.jsonl"
    missing_field.write_text(
        json.dumps({"user_id": user, "item_id": item, "rationale": "ok"}) + '\n{"user_id": "u"}\n'
    )
    with pytest.raises(DataFormatError, match=r"missing\.jsonl:2: field 'item_id'"):
        lists(source, teacher_rationales=str(missing_field)).training_rationales()
    not_json = tmp_path / "broken.jsonl"
    not_json.write_text("{not json\n")
    with pytest.raises(DataFormatError, match=r"broken\.jsonl:1:.*not valid JSON"):
        lists(source, teacher_rationales=str(not_json)).training_rationales()
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"user_id": user, "item_id": item, "rationale": "ok"}) + "\n")
    with pytest.raises(ValueError, match=r"partial\.jsonl: no rationale for user_id"):
        lists(source, teacher_rationales=str(partial)).training_rationales()
    twice = tmp_path / "twice.jsonl"
    twice.write_text((json.dumps({"user_id": user, "item_id": item, "rationale": "ok"}) + "\n") * 2)
    with pytest.raises(ValueError, match="two rationales"):
        lists(source, teacher_rationales=str(twice)).training_rationales()
    with pytest.raises(ValueError, match="needs teacher rationales"):
        fit(ReasoningToRank(tiny_llm(tokenizer), stage="sft"), lists(source, teacher_rationales=None), 1)


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "r2rank"


def test_shipped_configs_run_sft_then_rl_through_the_cli(
    tokenizer, source, tmp_path, monkeypatch, data_cache
):
    """configs/r2rank/catalogue-lm.yaml, then the RL overlay, on a tiny LM folder and a small catalogue."""
    from lightning_rec.cli import run_cli

    folder = tmp_path / "lm"
    llm = tiny_llm(tokenizer)
    llm.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    monkeypatch.setattr("sys.argv", ["lightning-rec"])
    small = [
        "--model.init_args.llm.init_args.model", str(folder),
        "--model.init_args.max_rationale_tokens", "4",
        "--data.init_args.source.init_args.num_users", "150",
        "--data.init_args.source.init_args.num_items", "80",
        "--data.init_args.source.init_args.num_categories", "5",
        "--data.init_args.num_candidates", str(CANDIDATES),
        "--data.init_args.history_titles", "3",
        "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    sft = run_cli(["fit", "--config", str(CONFIGS / "catalogue-lm.yaml"), *small])
    assert isinstance(sft.model.llm, HFCausalLM) and "val/ndcg@10" in sft.trainer.callback_metrics
    export = tmp_path / "outputs" / "r2rank-catalogue-lm" / "sft"
    assert (export / "r2rank.safetensors").is_file()

    rl_config = [
        "--config",
        str(CONFIGS / "catalogue-lm.yaml"),
        "--config",
        str(CONFIGS / "catalogue-lm-rl.yaml"),
    ]
    rl = run_cli(["fit", *rl_config, *small])
    assert rl.model.stage == "rl" and "train/ppo_kl" in rl.trainer.callback_metrics
    # RL started from the SFT export: its frozen reference holds the SFT weights.
    exported = ReasoningToRank(tiny_llm(tokenizer, seed=1), init_from=str(export)).llm.model.state_dict()
    reference = rl.model._reference.state_dict()
    assert all(torch.equal(reference[name], value) for name, value in exported.items())


def test_the_qwen_config_is_the_catalogue_config_on_another_llm():
    """The documented real run (needs network, never run here) keeps the data, protocol and stages."""
    catalogue = yaml.safe_load((CONFIGS / "catalogue-lm.yaml").read_text())
    qwen = yaml.safe_load((CONFIGS / "qwen2.5-0.5b.yaml").read_text())
    assert qwen["data"] == catalogue["data"]
    assert qwen["model"]["class_path"] == catalogue["model"]["class_path"]
    assert qwen["model"]["init_args"]["llm"]["init_args"]["model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    for stage in ("", "-rl"):
        name = f"qwen2.5-0.5b{stage}.yaml"
        assert set(yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]) <= set(
            inspect.signature(ReasoningToRank).parameters
        ), name
    rl = yaml.safe_load((CONFIGS / "qwen2.5-0.5b-rl.yaml").read_text())["model"]["init_args"]
    assert rl["stage"] == "rl" and rl["init_from"] == qwen["model"]["init_args"]["export_dir"]
