"""Every ``python`` snippet of the README runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path, monkeypatch, data_cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert snippets, "the README has no python snippet"
    for snippet in snippets:
        namespace: dict = {}
        exec(compile(snippet, str(README), "exec"), namespace)
    assert 0.0 <= namespace["metrics"]["test/ndcg@10"] <= 1.0
    assert namespace["top_items"].shape[1] == 10
