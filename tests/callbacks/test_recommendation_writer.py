"""``RecommendationWriter``: every user once, raw ids, the model's own top-K; the same under DDP."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from recommendation_setup import build

from lightning_rec.callbacks import RecommendationWriter


def _predict(model, data, **writer_options) -> list[dict]:
    writer = RecommendationWriter(**writer_options)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[writer])  # fmt: skip
    trainer.predict(model, data, return_predictions=False)
    return [json.loads(line) for line in writer.output_path.read_text().splitlines()]


def _raw_histories(data) -> dict[str, list[str]]:
    sequences = data.data
    return {
        user: [
            sequences.item_ids[i] for i in sequences.items[sequences.offsets[u] : sequences.offsets[u + 1]]
        ]
        for u, user in enumerate(sequences.user_ids)
    }


def test_each_user_gets_the_models_top_k_in_raw_ids(tmp_path, data_cache):
    model, data = build(data_cache)
    lines = _predict(model, data, output_path=str(tmp_path / "out" / "predictions.jsonl"), k=5)
    histories = _raw_histories(data)
    assert [line["user_id"] for line in lines] == data.user_ids  # every user once, in order
    model.eval()
    for line in lines:
        # The oracle: the Hub-facing raw-id API on the user's whole history.
        assert line["items"] == model.recommend_items(histories[line["user_id"]], k=5)
        assert not set(line["items"]) & set(histories[line["user_id"]])
        assert line["scores"] == sorted(line["scores"], reverse=True) and len(line["scores"]) == 5
    assert not list((tmp_path / "out").glob("*.part-*"))


def test_user_list_and_history_items_allowed(tmp_path, data_cache):
    model, data = build(data_cache)
    chosen = [data.user_ids[3], data.user_ids[0], data.user_ids[3]]  # a repeat is written once
    (tmp_path / "users.txt").write_text("\n".join(chosen) + "\n")
    model, data = build(data_cache, predict_users=str(tmp_path / "users.txt"))
    lines = _predict(model, data, output_path=str(tmp_path / "p.jsonl"), k=40, exclude_history=False)
    assert [line["user_id"] for line in lines] == chosen[:2]
    assert all(len(line["items"]) == 40 for line in lines)  # the whole catalogue, seen items included
    (tmp_path / "users.txt").write_text("nobody\n")
    model, data = build(data_cache, predict_users=str(tmp_path / "users.txt"))
    with pytest.raises(ValueError, match=r"not in the data.*'nobody'"):
        _predict(model, data, output_path=str(tmp_path / "q.jsonl"))


def test_ddp_on_two_processes_writes_every_user_once(tmp_path, data_cache, ddp_env):
    script = Path(__file__).parent / "ddp_predict_script.py"
    env = {**ddp_env, "PYTHONPATH": f"{Path(__file__).parent}:{ddp_env['PYTHONPATH']}"}
    command = [sys.executable, str(script), data_cache, str(tmp_path / "ddp.jsonl")]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = [json.loads(line) for line in (tmp_path / "ddp.jsonl").read_text().splitlines()]
    model, data = build(data_cache)
    assert len(data.user_ids) % 2 == 1  # an odd count: a padding sampler would repeat a user
    single = {
        line["user_id"]: line for line in _predict(model, data, output_path=str(tmp_path / "one.jsonl"), k=7)
    }
    assert sorted(line["user_id"] for line in ddp) == sorted(single)
    for line in ddp:
        assert line["items"] == single[line["user_id"]]["items"]
        assert line["scores"] == pytest.approx(single[line["user_id"]]["scores"], abs=1e-5)
    assert not list(tmp_path.glob("*.part-*"))
