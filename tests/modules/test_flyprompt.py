"""Tests for lightning_rec/modules/flyprompt.py: the CLI on both configs, the schedule, saving."""

import logging
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_rec.blocks import tiny_vit_config
from lightning_rec.cli import run_cli
from lightning_rec.datamodules import ContinualStreamDataModule
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained
from lightning_rec.modules import FlyPrompt

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "flyprompt"


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-rec"])


def quiet_trainer(**overrides) -> L.Trainer:
    arguments = {"max_epochs": 1, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                 "enable_progress_bar": False, "enable_model_summary": False, **overrides}  # fmt: skip
    return L.Trainer(**arguments)


def test_cli_runs_the_digits_stream_with_a_tiny_vit_prints_the_metrics_and_saves(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cli = run_cli(
        ["fit", "--config", str(CONFIGS / "digits.yaml"), "--trainer.default_root_dir", str(tmp_path),
         "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    )  # fmt: skip
    summary = next(
        record.getMessage() for record in caplog.records if "FlyPrompt stream" in record.getMessage()
    )
    assert "A_auc" in summary and "A_last" in summary
    model, data = cli.model, cli.datamodule
    results = model.stream_results
    # 10 classes: a chance-level learner scores about 0.1 once every class is seen.
    assert results["stream/A_last"] > 0.3 and results["stream/A_auc"] > 0.25
    assert len(model.evaluations.accuracies) == len(data.eval_points)
    assert bool(model.seen_classes.all()) and int(model.current_expert) == 4
    assert int(model.router.expert_counts.sum()) == data.stream_length

    # Hub round trip of the trained model: same probabilities, classes and stream metrics in the card.
    model.save_pretrained(tmp_path / "hub")
    loaded = FlyPrompt.from_pretrained(tmp_path / "hub")
    images = data.examples.inputs[data.test_indices[:20]]
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert loaded.vocab == {"class_names": [str(digit) for digit in range(10)]}
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "stream/A_auc" in card and "2602.01976" in card
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    assert torch.equal(state["router.gram"], model.router.gram), "the router's accumulators are checkpointed"


def test_experts_start_on_the_sample_schedule_from_the_earlier_prompts():
    torch.manual_seed(0)
    model = FlyPrompt(num_classes=10, backbone=tiny_vit_config(), num_experts=3, prompt_length=2,
                      prompt_layers=(0,), expand_dim=32, ridge=1.0, expert_period=400)  # fmt: skip
    starts = []
    original = model.prompts.init_expert

    def spy(expert: int) -> None:
        starts.append((expert, int(model.samples_seen)))
        before = model.prompts.prompts[:expert].detach().mean(dim=0)
        original(expert)
        torch.testing.assert_close(model.prompts.prompts[expert].detach(), before)

    model.prompts.init_expert = spy
    data = ContinualStreamDataModule(batch_size=32, eval_period=10_000)
    quiet_trainer().fit(model, data)
    # The first batch that starts at or after 400 and 800 samples switches experts.
    assert [expert for expert, _ in starts] == [1, 2]
    assert 400 <= starts[0][1] < 400 + 32 and 800 <= starts[1][1] < 800 + 32
    counts = model.router.expert_counts.tolist()
    assert counts[0] == starts[0][1] and counts[1] == starts[1][1] - starts[0][1]


def test_ablations_route_to_the_latest_expert_and_use_the_online_head():
    torch.manual_seed(0)
    model = FlyPrompt(num_classes=10, backbone=tiny_vit_config(), num_experts=2, prompt_length=2,
                      prompt_layers=(0,), expand_dim=32, use_router=False,
                      use_temporal_ensemble=False)  # fmt: skip
    model.current_expert.fill_(1)
    model.seen_classes[:4] = True
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        probabilities = model.eval()(images)
        features = model.prompts({"pixel_values": images}, torch.ones(3, dtype=torch.long))
        expected = model.heads.head(features)[:, :4].softmax(dim=-1)
    torch.testing.assert_close(probabilities[:, :4], expected)
    assert probabilities[:, 4:].eq(0).all()


def test_the_stream_is_single_pass_and_the_class_count_must_match():
    model = FlyPrompt(num_classes=10, backbone=tiny_vit_config(), num_experts=1, prompt_length=0,
                      prompt_layers=(0,), expand_dim=16)  # fmt: skip
    data = ContinualStreamDataModule(batch_size=64, eval_period=10_000)
    with pytest.raises(RuntimeError, match="single pass"):
        quiet_trainer(max_epochs=2).fit(model, data)
    wrong = FlyPrompt(num_classes=12, backbone=tiny_vit_config(), prompt_layers=(0,), expand_dim=16)
    with pytest.raises(ValueError, match="num_classes: 10"):
        quiet_trainer().fit(wrong, data)


def test_cli_runs_the_text_config_with_the_real_minilm(tmp_path, data_cache):
    assert resolve_pretrained(MINILM_HUB_ID) != MINILM_HUB_ID, "the MiniLM wheel resolves offline"
    small = ["--data.source.init_args.num_items", "150", "--data.source.init_args.num_categories", "5",
             "--data.source.init_args.cache_dir", data_cache, "--model.init_args.num_classes", "5",
             "--model.init_args.prompt_length", "2", "--model.init_args.prompt_layers", "[0]",
             "--model.init_args.expand_dim", "64", "--data.init_args.eval_period", "60",
             "--model.init_args.num_experts", "2"]  # fmt: skip
    cli = run_cli(
        ["fit", "--config", str(CONFIGS / "synthetic-titles.yaml"), *small, "--trainer.default_root_dir",
         str(tmp_path), "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
         "--trainer.enable_checkpointing", "false"]
    )  # fmt: skip
    # 5 title categories (the noun is in the title): far above the 0.2 of chance.
    assert cli.model.stream_results["stream/A_last"] > 0.6
    with torch.no_grad():
        probabilities = cli.model.eval()(["Acme Deluxe Red Wool " + cli.datamodule.class_names[0]])
    assert probabilities.shape == (1, 5)


_DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from lightning_rec.blocks import tiny_vit_config
from lightning_rec.datamodules import ContinualStreamDataModule
from lightning_rec.modules import FlyPrompt

torch.set_num_threads(1)
L.seed_everything(0)
model = FlyPrompt(num_classes=10, backbone=tiny_vit_config(), num_experts=3, prompt_length=2,
                  prompt_layers=(0,), expand_dim=64, ridge=10.0, add_cls_position=False)
data = ContinualStreamDataModule(batch_size=16, eval_period=400)
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, data)
with open(sys.argv[1] + f".{trainer.global_rank}", "w") as out:
    json.dump({"solution": model.router.solution.tolist(), "counts": model.router.expert_counts.tolist(),
               "head": model.heads.head.linear.weight.tolist(), "results": model.stream_results,
               "stream_length": data.stream_length}, out)
torch.distributed.destroy_process_group()  # a clean gloo shutdown (no abort at exit)
"""


def test_ddp_ranks_agree_and_learn_the_stream(tmp_path, ddp_env):
    import json
    import subprocess
    import sys

    script = tmp_path / "ddp_flyprompt.py"
    script.write_text(_DDP_SCRIPT)
    out = str(tmp_path / "result")
    done = subprocess.run([sys.executable, str(script), out], env=ddp_env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"result.{rank}").read_text()) for rank in range(2))
    # The router's totals are summed over both ranks' samples, and every rank holds the same model.
    assert zero["counts"] == one["counts"] and sum(zero["counts"]) > 0.95 * zero["stream_length"]
    assert zero["solution"] == one["solution"] and zero["head"] == one["head"]
    # Half the optimizer steps of a single process (16 samples per rank and step): twice chance (0.1).
    assert zero["results"] == one["results"] and zero["results"]["stream/A_last"] > 0.2


def _spied_fit(reset_first_moment: bool) -> tuple[FlyPrompt, dict[str, list]]:
    """A short digits stream (batches of 64, 3 experts) with spies on the EMA updates, the online steps
    and the experts' switches."""
    torch.manual_seed(0)
    model = FlyPrompt(num_classes=10, backbone=tiny_vit_config(), num_experts=3, prompt_length=2,
                      prompt_layers=(0,), expand_dim=32, ridge=1.0, online_iterations=2,
                      reset_first_moment=reset_first_moment)  # fmt: skip
    records = {"updates": [], "steps": [], "moments": []}
    update, online_step = model.heads.update, model.online_step

    def spy_update(expert: int) -> None:
        before = [[p.detach().clone() for p in average.parameters()] for average in model.heads.averages]
        update(expert)
        changed = [
            any(not torch.equal(p, q) for p, q in zip(old, average.parameters(), strict=True))
            for old, average in zip(before, model.heads.averages, strict=True)
        ]
        records["updates"].append((expert, int(model.current_expert), int(model.samples_seen), changed))

    def spy_step(encoded, unprompted, labels, experts):
        features = model.prompts(encoded, experts)
        head = model.heads.head
        logits = head(features)
        # The batch-class mask written out: a softmax over the classes present in the batch only.
        present = sorted(set(labels.tolist()))
        expected = -(logits[range(len(labels)), labels] - logits[:, present].logsumexp(dim=1)).mean()
        absent = [c for c in range(10) if c not in present]
        gradient = torch.autograd.grad(expected, head.linear.weight)[0]
        state = model.optimizers().optimizer.state.get(model.prompts.prompts, {})
        moment = state["exp_avg"][: int(experts[0])].abs().sum() if "exp_avg" in state else None
        records["moments"].append((int(experts[0]), int(model.samples_seen), moment))
        loss = online_step(encoded, unprompted, labels, experts)
        records["steps"].append((float(loss), float(expected), float(gradient[absent].abs().sum())))
        return loss

    model.heads.update, model.online_step = spy_update, spy_step
    data = ContinualStreamDataModule(batch_size=64, eval_period=10_000)
    quiet_trainer().fit(model, data)
    return model, records


@pytest.fixture(scope="module")
def spied_fit() -> tuple[FlyPrompt, dict[str, list]]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.argv", ["lightning-rec"])
        return _spied_fit(reset_first_moment=False)


def test_ema_updates_touch_only_the_current_expert_and_the_loss_masks_absent_classes(spied_fit):
    model, records = spied_fit
    batches = len(model.trainer.datamodule.train_dataloader())
    assert len(records["updates"]) == 2 * batches  # online_iterations per batch
    for expert, current, _, changed in records["updates"]:
        assert expert == current and changed == [index == expert for index in range(3)]
    for loss, expected, absent_gradient in records["steps"]:
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert absent_gradient == 0.0
    # Off by default, as in the official code: Adam's first moment of earlier experts survives a switch.
    first_after_switch = next(moment for expert, _, moment in records["moments"] if expert > 0)
    assert first_after_switch > 0


def test_the_first_moment_reset_is_an_option():
    _, records = _spied_fit(reset_first_moment=True)
    first_after_switch = next(moment for expert, _, moment in records["moments"] if expert > 0)
    assert first_after_switch == 0


def test_the_forward_routes_prompts_and_ensembles_as_written_out(spied_fit):
    model, _ = spied_fit
    model.eval()
    data = model.trainer.datamodule
    images = data.examples.inputs[data.test_indices[:24]]
    with torch.no_grad():
        probabilities = model(images)
        encoded = {"pixel_values": images}
        plain = model.prompts.backbone(**encoded).last_hidden_state[:, 0]
        scores = torch.relu(plain @ model.router.projection) @ model.router.solution  # (b e)
        experts = scores.masked_fill(model.router.expert_counts == 0, float("-inf")).argmax(dim=1)
        features = model.prompts(encoded, experts)
        members = [model.heads.head(features)]
        for slot in range(2):
            members.append(torch.stack([
                model.heads.averages[int(e)][slot](f) for f, e in zip(features, experts, strict=True)
            ]))  # fmt: skip
        seen = model.seen_classes
        expected = torch.stack([m.masked_fill(~seen, float("-inf")).softmax(dim=1) for m in members]).amax(0)
    assert len(set(experts.tolist())) > 1, "the test images are routed to more than one expert"
    torch.testing.assert_close(probabilities, expected)


def test_the_router_seed_comes_from_the_run_seed_unless_given():
    def projection(seed: int, **extra) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        return FlyPrompt(num_classes=3, backbone=tiny_vit_config(), num_experts=2, prompt_length=1,
                         prompt_layers=(0,), expand_dim=8, **extra).router.projection  # fmt: skip

    assert torch.equal(projection(1), projection(1)) and not torch.equal(projection(1), projection(2))
    assert torch.equal(projection(1, router_seed=7), projection(2, router_seed=7))


def test_images_get_the_pretrained_backbone_s_own_normalisation(tmp_path):
    import json

    from transformers import AutoConfig, AutoModel

    AutoModel.from_config(AutoConfig.for_model(**tiny_vit_config(num_channels=3))).save_pretrained(tmp_path)
    processor = {"do_normalize": True, "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.5]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    model = FlyPrompt(num_classes=3, backbone=str(tmp_path), num_experts=1, prompt_length=1,
                      prompt_layers=(0,), expand_dim=8)  # fmt: skip
    images = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(processor["image_mean"]), torch.tensor(processor["image_std"])
    expected = (images - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(model.encode_inputs(images)["pixel_values"], expected)
    # A config-dict backbone has no processor: pixels pass as they are.
    plain = FlyPrompt(num_classes=3, backbone=tiny_vit_config(num_channels=3), num_experts=1, prompt_length=1,
                      prompt_layers=(0,), expand_dim=8)  # fmt: skip
    assert torch.equal(plain.encode_inputs(images)["pixel_values"], images)


def test_the_official_augmentation_needs_torchvision():
    arguments = {"num_classes": 3, "backbone": tiny_vit_config(), "num_experts": 1, "prompt_length": 1,
                 "prompt_layers": (0,), "expand_dim": 8, "augment": True}  # fmt: skip
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            FlyPrompt(**arguments)
        return
    model = FlyPrompt(**arguments)
    images = torch.rand(4, 1, 8, 8)
    augmented = model._augment(images)
    assert augmented.shape == images.shape and 0.0 <= float(augmented.min()) <= float(augmented.max()) <= 1.0
