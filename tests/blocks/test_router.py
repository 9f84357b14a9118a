"""Tests for lightning_rec/blocks/router.py: the closed form against least squares, batching, DDP."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_rec.blocks import RandomExpandedAnalyticRouter

IN_DIM, EXPAND_DIM, EXPERTS, RIDGE = 5, 24, 3, 0.7


def make_data(samples: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(samples, IN_DIM, generator=generator, dtype=torch.float64)
    experts = torch.randint(0, EXPERTS, (samples,), generator=generator)
    return features, experts


def router() -> RandomExpandedAnalyticRouter:
    return RandomExpandedAnalyticRouter(IN_DIM, EXPAND_DIM, EXPERTS, RIDGE, seed=3).double()


def test_solution_equals_lstsq_ridge_regression_on_the_concatenated_features():
    features, experts = make_data()
    model = router()
    model.accumulate(features, experts)
    solution = model.solve()

    # Ridge regression as ordinary least squares on the augmented system [Phi; sqrt(l) I] U = [Y; 0].
    phi = F.relu(features @ model.projection)
    targets = F.one_hot(experts, EXPERTS).double()
    design = torch.cat([phi, RIDGE**0.5 * torch.eye(EXPAND_DIM, dtype=torch.float64)])
    observed = torch.cat([targets, torch.zeros(EXPAND_DIM, EXPERTS, dtype=torch.float64)])
    expected = torch.linalg.lstsq(design, observed).solution
    torch.testing.assert_close(solution, expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model.scores(features), phi @ expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(model(features), (phi @ expected).argmax(dim=1), rtol=0, atol=0)


def test_expand_dim_zero_is_ridge_regression_on_the_features_themselves():
    features, experts = make_data()
    model = RandomExpandedAnalyticRouter(IN_DIM, 0, EXPERTS, RIDGE).double()
    model.accumulate(features, experts)
    solution = model.solve()
    targets = F.one_hot(experts, EXPERTS).double()
    design = torch.cat([features, RIDGE**0.5 * torch.eye(IN_DIM, dtype=torch.float64)])
    observed = torch.cat([targets, torch.zeros(IN_DIM, EXPERTS, dtype=torch.float64)])
    torch.testing.assert_close(solution, torch.linalg.lstsq(design, observed).solution, rtol=1e-8, atol=1e-10)
    assert model.projection.numel() == 0 and model.gram.shape == (IN_DIM, IN_DIM)


def test_accumulating_in_batches_with_solves_between_gives_the_all_at_once_solution():
    features, experts = make_data(samples=53, seed=1)
    whole = router()
    whole.accumulate(features, experts)
    whole.solve()
    batched = router()
    for start, stop in ((0, 7), (7, 8), (8, 30), (30, 53)):
        batched.accumulate(features[start:stop], experts[start:stop])
        if stop in (8, 30):
            batched.solve()  # folding pending sums into the totals mid-stream changes nothing
    batched.solve()
    torch.testing.assert_close(batched.solution, whole.solution, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batched.gram, whole.gram, rtol=1e-12, atol=1e-12)
    assert batched.expert_counts.tolist() == torch.bincount(experts, minlength=EXPERTS).double().tolist()


def test_routes_only_to_experts_that_have_samples():
    features, _ = make_data(samples=30, seed=2)
    model = router()
    model.accumulate(features, torch.zeros(30, dtype=torch.long))
    model.accumulate(features[:10], torch.full((10,), 2))
    model.solve()
    routed = model(make_data(samples=200, seed=5)[0])
    assert set(routed.tolist()) <= {0, 2}
    # Before any sample, every expert is a candidate and the zero solution routes to expert 0.
    assert router()(features).eq(0).all()


def test_totals_and_solution_are_saved_and_pending_sums_are_not():
    model = router()
    model.accumulate(*make_data())
    assert set(model.state_dict()) == {"projection", "gram", "cross", "expert_counts", "solution"}
    assert model.gram.abs().sum() == 0, "before a solve the samples are pending"
    model.solve()
    restored = router()
    restored.load_state_dict(model.state_dict())
    features = make_data(seed=9)[0]
    assert torch.equal(restored(features), model(features))
    assert torch.equal(restored.projection, model.projection), "the random matrix is seeded"


def test_bad_inputs_are_refused_with_the_argument_named():
    model = router()
    with pytest.raises(ValueError, match=r"features of shape \(b, 5\)"):
        model.accumulate(torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expert ids must lie in \[0, 3\)"):
        model.accumulate(torch.randn(2, 5, dtype=torch.float64), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="experts must have shape"):
        model.accumulate(torch.randn(2, 5, dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(ValueError, match="ridge"):
        RandomExpandedAnalyticRouter(IN_DIM, EXPAND_DIM, EXPERTS, ridge=0.0)
    with pytest.raises(ValueError, match="expand_dim must be >= 0"):
        RandomExpandedAnalyticRouter(IN_DIM, -1, EXPERTS)


_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_router import make_data, router
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    features, experts = make_data(samples=61, seed=4)
    model = router()
    # Uneven shards, accumulated in two batches each, with a solve (a collective) in between.
    shard = slice(0, 25) if rank == 0 else slice(25, 61)
    part_features, part_experts = features[shard], experts[shard]
    half = len(part_experts) // 2
    model.accumulate(part_features[:half], part_experts[:half])
    model.solve()
    model.accumulate(part_features[half:], part_experts[half:])
    model.solve()
    with open(sys.argv[1] + f".{rank}", "w") as out:
        json.dump({"solution": model.solution.tolist(), "counts": model.expert_counts.tolist()}, out)
    dist.destroy_process_group()
    """
)


def test_ddp_all_reduced_solution_equals_the_single_process_one(tmp_path, ddp_env):
    env = {**ddp_env, "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2", "TEST_DIR": str(Path(__file__).parent)}
    out = str(tmp_path / "router")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_SCRIPT, out],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr[-3000:]
    features, experts = make_data(samples=61, seed=4)
    single = router()
    single.accumulate(features, experts)
    single.solve()
    for rank in range(2):
        result = json.loads((tmp_path / f"router.{rank}").read_text())
        torch.testing.assert_close(
            torch.tensor(result["solution"], dtype=torch.float64), single.solution, rtol=1e-9, atol=1e-12
        )
        assert result["counts"] == single.expert_counts.tolist()
