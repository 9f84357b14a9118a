"""save_pretrained / from_pretrained / push_to_hub for every registered block and module."""

import inspect
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file

import lightning_rec.blocks
import lightning_rec.modules  # noqa: F401  (fills the registry)
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.hub import HubMixin, UntrustedClassError
from lightning_rec.modules import SASRec

REGISTERED = sorted(
    path
    for path, cls in HubMixin.registry.items()
    if not inspect.isabstract(cls) and not cls.__name__.startswith("_") and path.startswith("lightning_rec.")
)


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(*inputs)


def test_registry_holds_the_zoo():
    names = {path.rsplit(".", 1)[1] for path in REGISTERED}
    assert {"SASRec", "BERT4Rec", "GRU4Rec", "HSTU", "MostPopular", "SequentialRecommender"} <= names


@pytest.mark.parametrize("class_path", REGISTERED)
def test_save_then_load_gives_identical_outputs(class_path, tmp_path):
    cls = HubMixin.registry[class_path]
    torch.manual_seed(0)
    model, inputs = cls.hub_example()
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(tmp_path))
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls
    assert torch.equal(_outputs(model, inputs), _outputs(loaded, inputs))
    assert loaded.config_tree() == model.config_tree()


def test_injected_encoder_survives_the_round_trip(tmp_path):
    from lightning_rec.blocks import GRU4Rec

    model = SASRec(encoder=GRU4Rec(num_items=15, hidden_size=12, max_len=6), learning_rate=3e-3)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["init_args"]["encoder"]["class_path"] == "lightning_rec.blocks.sequence.GRU4Rec"
    loaded = SASRec.from_pretrained(tmp_path)
    assert isinstance(loaded.encoder, GRU4Rec) and loaded.encoder.hidden_size == 12
    assert loaded.hparams["learning_rate"] == 3e-3
    # A block pulled out of a saved module on its own.
    model.encoder.save_pretrained(tmp_path / "encoder")
    encoder = GRU4Rec.from_pretrained(tmp_path / "encoder")
    ids = torch.randint(1, 16, (2, 6))
    assert torch.equal(encoder.eval()(ids), model.encoder.eval()(ids))


def _saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model, _ = SASRec.hub_example()
    model.save_pretrained(tmp_path / "repo")
    return tmp_path / "repo"


@pytest.mark.parametrize(
    "class_path", ["os.system", "builtins.eval", "lightning_rec.data.sequences.os", "subprocess.Popen"]
)
def test_hostile_config_is_refused_and_executes_nothing(tmp_path, class_path):
    repo = _saved(tmp_path)
    marker = tmp_path / "pwned"
    config = json.loads((repo / "config.json").read_text())
    config["init_args"]["encoder"] = {"class_path": class_path, "init_args": {"command": f"touch {marker}"}}
    (repo / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedClassError, match="refusing"):
        SASRec.from_pretrained(repo)
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_only_repo_is_refused_without_unpickling(tmp_path):
    repo = _saved(tmp_path)
    marker = tmp_path / "unpickled"
    (repo / "model.safetensors").unlink()
    (repo / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        SASRec.from_pretrained(repo)
    assert not marker.exists()


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_weights_with_missing_or_extra_keys_are_refused(tmp_path, change):
    repo = _saved(tmp_path)
    weights = load_file(repo / "model.safetensors")
    if change == "missing":
        removed = sorted(weights)[0]
        del weights[removed]
        expected = removed
    else:
        weights["encoder.surprise"] = torch.zeros(3)
        expected = "encoder.surprise"
    save_file(weights, repo / "model.safetensors")
    with pytest.raises(RuntimeError, match=expected.replace(".", r"\.")):
        SASRec.from_pretrained(repo)


def test_loading_another_class_is_an_error(tmp_path):
    repo = _saved(tmp_path)
    with pytest.raises(UntrustedClassError, match=r"not a lightning_rec\.blocks\.sequence\.SASRec"):
        SASRecEncoder.from_pretrained(repo)


def test_push_pull_in_a_fresh_process_new_commit_and_offline_cache(local_hub, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model, (inputs,) = SASRec.hub_example()
    model.push_to_hub("org/sasrec-tiny", token="test-token")
    first_commits = local_hub.commits("org/sasrec-tiny")

    script = (
        "import sys, torch; from lightning_rec.modules import SASRec; "
        "m = SASRec.from_pretrained('org/sasrec-tiny'); "
        "torch.save(m(torch.load(sys.argv[1])), sys.argv[2])"
    )
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-c", script, str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), _outputs(model, (inputs,)))

    folder = Path(snapshot_download("org/sasrec-tiny"))
    assert {"config.json", "model.safetensors", "README.md"} <= set(os.listdir(folder))

    with torch.no_grad():
        model.encoder.item_embedding.weight.add_(0.5)
    model.push_to_hub("org/sasrec-tiny", token="test-token")
    assert len(local_hub.commits("org/sasrec-tiny")) == len(first_commits) + 1
    pulled = SASRec.from_pretrained("org/sasrec-tiny")
    assert torch.equal(_outputs(pulled, (inputs,)), _outputs(model, (inputs,)))

    local_hub.stop()
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = SASRec.from_pretrained("org/sasrec-tiny")
    assert torch.equal(_outputs(cached, (inputs,)), _outputs(model, (inputs,)))


def test_pretrained_starts_from_a_saved_model_and_is_not_written_back(tmp_path):
    torch.manual_seed(0)
    source, (inputs,) = SASRec.hub_example()
    source.vocab = {"item_ids": ["[PAD]", *[f"i{k}" for k in range(20)]]}
    source.save_pretrained(tmp_path / "start")
    torch.manual_seed(1)  # a different initialisation, replaced by the saved weights
    model = SASRec(
        encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=8), pretrained=str(tmp_path / "start")
    )
    assert torch.equal(_outputs(model, (inputs,)), _outputs(source, (inputs,)))
    assert model.vocab == source.vocab
    assert "pretrained" not in model.config_tree()["init_args"]
    with pytest.raises(RuntimeError, match=r"size mismatch|do not match"):
        SASRec(
            encoder=SASRecEncoder(num_items=25, hidden_size=16, max_len=8), pretrained=str(tmp_path / "start")
        )


def test_a_block_holding_torch_nn_layers_saves_and_loads(tmp_path):
    """Issue 19: TemporalEnsembleHeads(nn.Linear(8, 10)).save_pretrained(...) raised a TypeError."""
    from torch import nn

    from lightning_rec.blocks import TemporalEnsembleHeads

    torch.manual_seed(0)
    heads = TemporalEnsembleHeads(nn.Linear(8, 10), num_experts=2)
    heads.save_pretrained(tmp_path / "linear")
    loaded = TemporalEnsembleHeads.from_pretrained(tmp_path / "linear")
    assert type(loaded.head) is nn.Linear
    features = torch.randn(3, 8)
    assert torch.equal(loaded.head(features), heads.head(features))

    # Every recorded layer, nested in a Sequential, with non-default arguments.
    head = nn.Sequential(
        nn.LayerNorm(8, eps=1e-3, bias=False), nn.Dropout(0.25), nn.Linear(8, 16, bias=False),
        nn.GELU(approximate="tanh"), nn.ReLU(), nn.SiLU(), nn.Tanh(), nn.Sigmoid(), nn.Identity(),
        nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Softplus(beta=2.0, threshold=10.0), nn.Linear(16, 10),
    )  # fmt: skip
    heads = TemporalEnsembleHeads(head)
    heads.save_pretrained(tmp_path / "sequential")
    loaded = TemporalEnsembleHeads.from_pretrained(tmp_path / "sequential")
    assert repr(loaded.head) == repr(head)
    assert torch.equal(loaded.eval().head(features), heads.eval().head(features))


def test_an_embedding_keeps_its_arguments(tmp_path):
    from torch import nn

    from lightning_rec.blocks import TemporalEnsembleHeads
    from lightning_rec.hub.config_tree import encode_init_value, instantiate_tree

    embedding = nn.Embedding(12, 4, padding_idx=0, max_norm=2.0, scale_grad_by_freq=True)
    tree = encode_init_value("head", embedding)
    rebuilt = instantiate_tree(tree, expected=nn.Embedding)
    assert repr(rebuilt) == repr(embedding) and rebuilt.padding_idx == 0 and rebuilt.max_norm == 2.0
    assert TemporalEnsembleHeads(embedding).config_tree()["init_args"]["head"] == tree


def test_an_unknown_layer_names_the_two_ways_to_save_it(tmp_path, monkeypatch):
    from torch import nn

    from lightning_rec.blocks import TemporalEnsembleHeads
    from lightning_rec.hub import config_tree, register_trusted_class

    monkeypatch.setattr(config_tree, "_REGISTERED", {})  # this test's registration ends with it

    class MyHead(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width
            self.linear = nn.Linear(width, 10)

        def forward(self, features):
            return self.linear(features)

    heads = TemporalEnsembleHeads(MyHead(8))
    with pytest.raises(TypeError, match=r"MyHead.*HubMixin.*register_trusted_class"):
        heads.save_pretrained(tmp_path / "unknown")
    with pytest.raises(TypeError, match="needs init_args"):
        register_trusted_class(MyHead)
    with pytest.raises(TypeError, match="MyLinear"):  # a subclass of a recorded layer is not that layer
        TemporalEnsembleHeads(type("MyLinear", (nn.Linear,), {})(8, 10)).save_pretrained(tmp_path / "sub")
    with pytest.raises(TypeError, match="named children"):
        TemporalEnsembleHeads(nn.Sequential(OrderedDict(fc=nn.Linear(8, 10)))).save_pretrained(tmp_path / "o")

    register_trusted_class(MyHead, lambda head: {"width": head.width})
    heads.save_pretrained(tmp_path / "registered")
    loaded = TemporalEnsembleHeads.from_pretrained(tmp_path / "registered")
    assert type(loaded.head) is MyHead and loaded.head.width == 8
