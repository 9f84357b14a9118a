"""Every ``python`` snippet of the README runs as written (in order, sharing one namespace)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path, monkeypatch, data_cache):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(snippets) >= 2, "the README lost its Python or its 'Publish and load' snippets"
    namespace: dict = {}
    for snippet in snippets:  # later snippets use the model of the first
        exec(compile(snippet, str(README), "exec"), namespace)
    assert 0.0 <= namespace["metrics"]["test/ndcg@10"] <= 1.0
    ids = namespace["top_items"]
    assert ids.shape[1] == 10
    model = namespace["model"].eval()
    assert torch.equal(namespace["pulled"].eval()(ids), model(ids))
    assert torch.equal(namespace["same"].eval()(ids), model(ids))
    # "Compose the blocks": each block on the user's own module came back from save_pretrained.
    for name in ("again", "same_heads", "reloaded", "reloaded_judge"):
        assert name in namespace, f"the compose snippet lost {name!r}"
    assert type(namespace["again"].encoder.module).__name__ == "MyEncoder"
    judge, reloaded_judge = namespace["judge"], namespace["reloaded_judge"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(judge.state_dict().values(), reloaded_judge.state_dict().values(), strict=True)
    )
