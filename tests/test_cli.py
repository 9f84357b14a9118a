"""The ``lightning-rec`` CLI: fit then test from the shipped YAML, with each encoder swapped in."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_rec.cli import run_cli

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "sasrec" / "synthetic.yaml")
SMALL = [
    "--data.source.init_args.num_users", "120",
    "--data.source.init_args.num_items", "80",
    "--data.source.init_args.num_categories", "6",
    "--trainer.max_epochs", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-rec"])


@pytest.mark.parametrize("encoder", ["SASRec", "GRU4Rec", "BERT4Rec", "HSTU"])
def test_fit_then_test_with_the_checkpoint(encoder, tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    fit = run_cli(["fit", "--config", CONFIG, "--model.encoder", encoder, *SMALL])
    assert type(fit.model.encoder).__name__ == encoder
    assert fit.model.encoder.num_items == fit.datamodule.num_items  # linked from the data
    checkpoint = tmp_path / "outputs" / "sasrec-synthetic" / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()

    test = run_cli(
        ["test", "--config", CONFIG, "--model.encoder", encoder, *SMALL, "--ckpt_path", str(checkpoint)]
    )
    metrics = test.trainer.callback_metrics
    assert {"test/recall@10", "test/ndcg@10", "test/mrr@10"} <= set(metrics)
    assert all(math.isfinite(float(metrics[k])) and 0 <= float(metrics[k]) <= 1 for k in metrics)
    # The tested weights are the checkpoint's, not a fresh initialisation.
    saved = torch.load(checkpoint, weights_only=False)["state_dict"]  # our own file, written above
    tested = test.model.state_dict()
    assert saved.keys() == tested.keys()
    assert all(torch.equal(saved[k], tested[k]) for k in saved)


def test_unknown_encoder_is_a_clear_error(tmp_path, monkeypatch, data_cache, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", CONFIG, "--model.encoder", "NoSuchEncoder", *SMALL])
    assert "NoSuchEncoder" in capsys.readouterr().err


@pytest.mark.parametrize("with_config", [True, False])
def test_push_converts_a_checkpoint_and_uploads_it(with_config, tmp_path, monkeypatch, data_cache, local_hub):
    from huggingface_hub import ModelCard, hf_hub_download, list_repo_files

    from lightning_rec.cli import main
    from lightning_rec.modules import SASRec

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    fit = run_cli(["fit", "--config", CONFIG, *SMALL])
    checkpoint = tmp_path / "outputs" / "sasrec-synthetic" / "checkpoints" / "best.ckpt"
    # With --config, the checkpoint is tested on the same (small) data before the upload.
    config_args = ["--config", CONFIG, *SMALL] if with_config else []
    main(["push", "--ckpt_path", str(checkpoint), "--repo_id", "org/pushed", "--token", "t", *config_args])

    files = set(list_repo_files("org/pushed"))
    assert {"config.json", "model.safetensors", "vocab.json", "README.md"} <= files
    assert not any(name.endswith(".ckpt") for name in files)
    pulled = SASRec.from_pretrained("org/pushed")
    trained = fit.model.eval()
    ids = torch.randint(1, trained.num_items + 1, (4, 50))
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    trained.load_state_dict(saved)
    assert torch.equal(pulled(ids), trained(ids))
    card = ModelCard.load(hf_hub_download("org/pushed", "README.md"))
    assert bool(card.data.eval_results) == with_config


def test_fit_can_start_from_a_saved_model(tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    first = run_cli(["fit", "--config", CONFIG, *SMALL])
    first.model.save_pretrained(tmp_path / "start")
    no_training = ["--trainer.max_epochs", "0"]
    second = run_cli(
        ["fit", "--config", CONFIG, *SMALL, *no_training, "--model.init_args.pretrained", "start"]
    )
    ids = torch.randint(1, first.model.num_items + 1, (3, 50))
    assert torch.equal(second.model.eval()(ids), first.model.eval()(ids))


DIFFUREASON = Path(__file__).resolve().parents[1] / "configs" / "diffureason"


def test_diffureason_fit_then_test_from_the_shipped_config(tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    config = str(DIFFUREASON / "synthetic.yaml")
    fit = run_cli(["fit", "--config", config, *SMALL, "--model.grpo_warmup_steps", "0"])
    assert fit.model.encoder.num_items == fit.datamodule.num_items
    assert "train/grpo_clip_fraction" in fit.trainer.callback_metrics  # all three stages ran
    checkpoint = tmp_path / "outputs" / "diffureason-synthetic" / "checkpoints" / "best.ckpt"
    test = run_cli(["test", "--config", config, *SMALL, "--ckpt_path", str(checkpoint)])
    assert math.isfinite(float(test.trainer.callback_metrics["test/ndcg@10"]))


@pytest.mark.parametrize(
    "row, switches",
    [("backbone", (False, False, False)), ("thinking", (True, False, False)),
     ("thinking-diffusion", (True, True, False))],
)  # fmt: skip
def test_diffureason_ablation_files_stack_on_a_config(row, switches, tmp_path, monkeypatch, data_cache):
    from lightning_rec.cli import LightningRecCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    arguments = ["--config", str(DIFFUREASON / "synthetic.yaml"),
                 "--config", str(DIFFUREASON / "ablation" / f"{row}.yaml"), *SMALL]  # fmt: skip
    cli = LightningRecCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                          subclass_mode_data=True, run=False, args=arguments)  # fmt: skip
    model = cli.model
    assert (model.thinking is not None, model.diffusion is not None, model.use_grpo) == switches


def test_diffureason_judge_reward_config_fits_with_a_saved_judge(tmp_path, monkeypatch, data_cache):
    from lightning_rec.blocks import PersonalizedSemanticJudge

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    # A judge as S-GRec's judge stage saves it (its checkpoint works the same: tests/modules/test_rewards.py).
    judge = PersonalizedSemanticJudge(user_dim=384, hidden_size=64)
    torch.nn.init.normal_(judge.aggregator[-1].weight)
    judge.save_pretrained(tmp_path / "judge")
    # One batch per epoch on this data: two epochs are two GRPO steps, each followed by validation.
    arguments = ["--config", str(DIFFUREASON / "judge-reward.yaml"), *SMALL, "--trainer.max_epochs", "2",
                 "--model.grpo_warmup_steps", "0",
                 "--model.reward_model.init_args.pretrained", str(tmp_path / "judge")]  # fmt: skip
    fit = run_cli(["fit", *arguments])
    loaded = fit.model.reward_model.judge.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in judge.state_dict().items())
    # Both steps were GRPO updates rewarded by the judge: a holistic score in (0, 1).
    assert fit.trainer.global_step == 2 and "val/ndcg@10" in fit.trainer.callback_metrics
    assert 0 < float(fit.trainer.callback_metrics["train/grpo_reward_model_mean"]) < 1


def test_predict_writes_raw_ids_from_a_checkpoint_or_a_saved_model(tmp_path, monkeypatch, data_cache):
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    fit = run_cli(["fit", "--config", CONFIG, *SMALL])
    fit.model.save_pretrained(tmp_path / "saved")
    checkpoint = tmp_path / "outputs" / "sasrec-synthetic" / "checkpoints" / "best.ckpt"
    runs = {
        "ckpt": ["--ckpt_path", str(checkpoint)],
        "saved": ["--model.init_args.pretrained", "saved"],
    }
    written = {}
    for name, source in runs.items():
        output = ["--recommend.output_path", f"{name}.jsonl", "--recommend.k", "4"]
        run_cli(["predict", "--config", CONFIG, *SMALL, *source, *output])
        written[name] = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    data = fit.datamodule.data
    assert [line["user_id"] for line in written["ckpt"]] == data.user_ids  # raw ids, every user once
    saved = torch.load(checkpoint, weights_only=True)  # ExactResume's states load without unpickling
    assert any(key.startswith("ExactResume") for key in saved["callbacks"])  # every CLI run resumes exactly
    model = fit.model.eval()
    model.load_state_dict(saved["state_dict"])
    for user, line in zip(data.user_ids[:10], written["ckpt"], strict=False):
        u = data.user_ids.index(user)
        history = [data.item_ids[i] for i in data.items[data.offsets[u] : data.offsets[u + 1]]]
        assert line["items"] == model.recommend_items(history, k=4)
    # The saved model holds the fitted (last) weights, the checkpoint the best ones: one epoch, the same.
    assert [line["items"] for line in written["saved"]] == [line["items"] for line in written["ckpt"]]


def test_push_with_config_refuses_a_pickled_checkpoint(tmp_path, monkeypatch, data_cache):
    import pickle

    from lightning_rec.cli import main

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "unpickled",))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    torch.save({"state_dict": {}, "payload": Exploit()}, tmp_path / "hostile.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        main(
            [
                "push",
                "--ckpt_path",
                "hostile.ckpt",
                "--repo_id",
                "org/x",
                "--token",
                "t",
                "--config",
                CONFIG,
                *SMALL,
            ]
        )
    assert not (tmp_path / "unpickled").exists()
