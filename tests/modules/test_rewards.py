"""Tests for lightning_rec/modules/rewards.py: JudgeReward scores item ids as the judge scores their
texts, reads the weights S-GRec's judge stage leaves behind, and refuses mismatched evidence."""

from types import SimpleNamespace

import pytest
import torch

from lightning_rec.blocks import ItemText, PersonalizedSemanticJudge, UserContext
from lightning_rec.modules import JudgeReward, SGRec


class LengthEvidence:
    """A stage-A backend computed by hand from text lengths (2-d user features, three aspects)."""

    aspects = ("profile", "future", "novelty")
    version = "length/v1"
    feature_size = 2

    def user_features(self, contexts):
        return torch.tensor(
            [[len(c.history), sum(len(item.title) for item in c.history) / 10] for c in contexts]
        )

    def score(self, contexts, candidates):
        return torch.tensor(
            [
                [
                    [
                        len(item.title) / 20,
                        (len(c.history) % 3) / 2,
                        float(item.category not in c.categories()),
                    ]
                    for item in row
                ]
                for c, row in zip(contexts, candidates, strict=True)
            ]
        )


def _catalogue() -> SimpleNamespace:
    titles = ["", "Acme Tent", "Hooli Drone", "Stark Lamp", "Acme Pro Tent", "Globex Kettle"]
    categories = ["", "Tent", "Drone", "Lamp", "Tent", "Kitchen"]
    return SimpleNamespace(
        item_ids=["[PAD]", "a", "b", "c", "d", "e"], item_title=titles, item_category=categories
    )


def test_judge_reward_is_the_judges_score_of_the_items_texts():
    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=2, hidden_size=4)
    torch.nn.init.normal_(judge.aggregator[-1].weight)  # personalised weights, not the uniform start
    reward = JudgeReward(judge=judge, score_cache_dir="")
    reward.attach_evidence(LengthEvidence())
    reward.setup(_catalogue())
    histories = torch.tensor([[0, 0, 1, 3], [2, 4, 5, 1]])
    items = torch.tensor([[2, 4, 5], [3, 1, 2]])
    scores = reward(histories, items)
    # The same judge on texts written out by hand.
    catalogue = _catalogue()
    texts = [ItemText(t, c) for t, c in zip(catalogue.item_title, catalogue.item_category, strict=True)]
    contexts = [
        UserContext.of([texts[1], texts[3]]),
        UserContext.of([texts[2], texts[4], texts[5], texts[1]]),
    ]
    candidates = [[texts[2], texts[4], texts[5]], [texts[3], texts[1], texts[2]]]
    expected = judge.score_texts(LengthEvidence(), contexts, candidates)
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, scores.mean())  # the check can fail: the scores differ


def test_judge_weights_come_from_an_sgrec_checkpoint_or_a_saved_judge(tmp_path):
    sgrec, _ = SGRec.hub_example()
    torch.nn.init.normal_(sgrec.judge.aggregator[-1].weight)
    trained = sgrec.judge.state_dict()
    torch.save({"state_dict": sgrec.state_dict()}, tmp_path / "judge-stage.ckpt")
    sgrec.judge.save_pretrained(tmp_path / "judge")
    sgrec.save_pretrained(tmp_path / "sgrec")
    for source in ("judge-stage.ckpt", "judge", "sgrec"):
        reward = JudgeReward(
            judge=PersonalizedSemanticJudge(user_dim=8, hidden_size=16), pretrained=str(tmp_path / source)
        )
        loaded = reward.judge.state_dict()
        assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
        assert not any(p.requires_grad for p in reward.judge.parameters())


def test_mismatched_evidence_and_use_before_setup_are_clear_errors():
    reward = JudgeReward(judge=PersonalizedSemanticJudge(user_dim=8), score_cache_dir="")
    with pytest.raises(ValueError, match="user_dim=2"):
        reward.attach_evidence(LengthEvidence())
    with pytest.raises(RuntimeError, match="setup"):
        reward(torch.tensor([[1]]), torch.tensor([[2]]))


def test_a_diffureason_with_a_judge_reward_saves_and_loads(tmp_path):
    from lightning_rec.blocks import DiffusionHead
    from lightning_rec.blocks import SASRec as SASRecEncoder
    from lightning_rec.modules import DiffuReason

    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=8, hidden_size=16)
    torch.nn.init.normal_(judge.aggregator[-1].weight)
    model = DiffuReason(
        encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=8),
        diffusion=DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4),
        group_size=2,
        reward_model=JudgeReward(judge=judge, pretrained=None, score_cache_dir=str(tmp_path / "cache")),
        reward_model_weight=0.5,
    )
    model.save_pretrained(tmp_path / "saved")
    loaded = DiffuReason.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded.reward_model, JudgeReward) and loaded.reward_model_weight == 0.5
    # Where the weights came from and this machine's cache folder do not travel; the weights do.
    assert loaded.reward_model.score_cache_dir is None
    saved, restored = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(saved[k], restored[k]) for k in saved) and saved.keys() == restored.keys()
