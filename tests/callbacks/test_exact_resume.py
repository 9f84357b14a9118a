"""4 epochs straight == 2 epochs, then a fresh process resuming ``last.ckpt`` to 4, bit for bit."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from resume_script import train

SCRIPT = Path(__file__).parent / "resume_script.py"
METHODS = ("sasrec", "diffureason", "gpr")


@pytest.fixture
def restores_determinism():
    """Trainer(deterministic=True) switches torch's deterministic mode on for the whole process."""
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


def test_resume_in_a_fresh_process_ends_where_the_straight_run_does(
    tmp_path, data_cache, ddp_env, restores_determinism
):
    for method in METHODS:
        for epochs in (4, 2):
            train(method, epochs, data_cache, tmp_path, ckpt_path=None)
    resumes = [f"{method}:4:{tmp_path / f'{method}-2' / 'last.ckpt'}" for method in METHODS]
    (tmp_path / "resumed").mkdir()
    command = [sys.executable, str(SCRIPT), data_cache, str(tmp_path / "resumed"), "1", *resumes]
    env = {**ddp_env, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for method in METHODS:
        straight = load_file(tmp_path / f"{method}-4.safetensors")
        halfway = load_file(tmp_path / f"{method}-2.safetensors")
        resumed = load_file(tmp_path / "resumed" / f"{method}-4.safetensors")
        assert straight.keys() == resumed.keys()
        assert not all(torch.equal(straight[key], halfway[key]) for key in straight)  # epochs 3-4 trained
        different = [key for key in straight if not torch.equal(straight[key], resumed[key])]
        assert different == [], f"{method}: resumed weights differ in {different}"


def test_ddp_resume_restores_each_processs_states(tmp_path, data_cache, ddp_env):
    """DiffuReason on 2 DDP processes, 2 epochs == 1 + resume: its processes draw different random
    numbers (4 vs 2 + 2 epochs, restoring rank 0's states on both ended 0.009 away), so every
    process's states are saved and each restores its own."""
    env = {**ddp_env, "OMP_NUM_THREADS": "1"}
    first = [sys.executable, str(SCRIPT), data_cache, str(tmp_path), "2", "diffureason:2", "diffureason:1"]
    done = subprocess.run(first, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (tmp_path / "resumed").mkdir()
    resume = f"diffureason:2:{tmp_path / 'diffureason-1' / 'last.ckpt'}"
    command = [sys.executable, str(SCRIPT), data_cache, str(tmp_path / "resumed"), "2", resume]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    straight = load_file(tmp_path / "diffureason-2.safetensors")
    resumed = load_file(tmp_path / "resumed" / "diffureason-2.safetensors")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
