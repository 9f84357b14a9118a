"""SASRec and DiffuReason under ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` = one process."""

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ddp_fit_script import build


@pytest.mark.parametrize("method", ["sasrec", "diffureason"])
def test_ddp_fit_and_test_match_a_single_process_test(method, tmp_path, data_cache, ddp_env):
    script = Path(__file__).parent / "ddp_fit_script.py"
    env = ddp_env
    command = [sys.executable, str(script), method, data_cache, str(tmp_path)]
    done = subprocess.run(command, env=env, timeout=300, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["queries"] % 2 == 0, "an odd query count would make the DistributedSampler repeat one"

    model, data = build(method, data_cache)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)  # written by the script above
    model.load_state_dict(checkpoint["state_dict"])
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                       enable_model_summary=False).test(model, data, verbose=False)[0]  # fmt: skip
    assert single.keys() == ddp["metrics"].keys()
    for key, value in single.items():
        assert ddp["metrics"][key] == pytest.approx(value, abs=1e-6), key
    # Training moved the model well away from chance.
    assert single["test/recall@10"] > 10 / data.num_items
