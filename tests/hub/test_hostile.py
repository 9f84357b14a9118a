"""Hostile repos, adapters, checkpoints and caches are refused with no side effect.

Every probe runs sealed: starting a subprocess, calling ``os.system``, opening a socket or building
any ``nn.Module`` is recorded (and fails), and no file may appear under the test's folder, where the
data cache, the Hugging Face cache and the attacker's chosen paths all point.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

import lightning_rec.modules  # noqa: F401  (fills the registry)
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.blocks import inject_smoa, load_smoa, save_smoa
from lightning_rec.data.score_cache import ScoreCache
from lightning_rec.hub import UntrustedClassError
from lightning_rec.hub import mixin as hub_mixin
from lightning_rec.modules import SASRec


class Sealed:
    """What a probe did: side effects recorded while sealed, and files under the watched folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started = False
        self.calls: list[str] = []
        self.before: set[Path] = set()

    def start(self) -> None:
        """Begin the probe: what happened while setting it up does not count."""
        self.started = True
        self.calls.clear()
        self.before = set(self.folder.rglob("*"))

    def assert_untouched(self, builds_allowed: bool = False) -> None:
        calls = [call for call in self.calls if not (builds_allowed and call.startswith("build"))]
        assert calls == [], f"side effects: {calls}"
        assert set(self.folder.rglob("*")) == self.before, "new files appeared"


@pytest.fixture
def sealed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sealed]:
    monkeypatch.setenv("LIGHTNING_REC_CACHE", str(tmp_path / "data_cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    state = Sealed(tmp_path)
    module_init = nn.Module.__init__

    def refuse(what: str):
        def call(*args, **kwargs):
            state.calls.append(what)
            raise OSError(f"sealed test: {what} is not allowed")

        return call

    def counting_module_init(self, *args, **kwargs):
        if state.started:  # setting up the probe builds modules
            state.calls.append(f"build {type(self).__name__}")
        module_init(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("subprocess"))
    monkeypatch.setattr(os, "system", refuse("os.system"))
    monkeypatch.setattr(socket.socket, "__init__", refuse("socket"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket"))
    monkeypatch.setattr(nn.Module, "__init__", counting_module_init)
    yield state


def _saved_sasrec(folder: Path) -> Path:
    torch.manual_seed(0)
    model, _ = SASRec.hub_example()
    model.vocab = {"item_ids": ["[PAD]", *[f"i{k}" for k in range(model.num_items)]]}
    model.save_pretrained(folder)
    return folder


def _edit_config(repo: Path, edit) -> None:
    config = json.loads((repo / "config.json").read_text())
    edit(config)
    (repo / "config.json").write_text(json.dumps(config))


RECBOLE = "lightning_rec.data.recbole_atomic.RecBoleExample"
# Not nn.Modules (readers, datamodules, caches, callbacks), code, or names that are not a class's own.
HOSTILE_CLASSES = [
    RECBOLE,
    "lightning_rec.data.synthetic.SyntheticReviews",
    "lightning_rec.datamodules.sequential.SequentialRecDataModule",
    "lightning_rec.data.score_cache.ScoreCache",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "lightning_rec.data.sequences.os",  # a module re-exported by a trusted module
    "lightning_rec.blocks.SASRec",  # a re-export: only a class's defining path is a name
    "torch.nn.parallel.DistributedDataParallel",  # an nn.Module that joins a process group
]


@pytest.mark.parametrize("class_path", HOSTILE_CLASSES)
@pytest.mark.parametrize("where", ["root", "nested"])
def test_hostile_class_in_config_is_refused_with_no_side_effect(class_path, where, tmp_path, sealed):
    repo = _saved_sasrec(tmp_path / "repo")
    attack = {"class_path": class_path, "init_args": {"cache_dir": str(tmp_path / "attacker")}}

    def edit(config):
        if where == "root":
            config.clear()
            config.update(attack)
        else:
            config["init_args"]["encoder"] = attack

    _edit_config(repo, edit)
    sealed.start()
    with pytest.raises(UntrustedClassError, match="refusing"):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched()
    assert not (tmp_path / "attacker").exists()


def test_a_trusted_module_in_the_wrong_slot_is_refused_before_anything_is_built(tmp_path, sealed):
    """AdapterFineTune is allowlisted (it downloads its base model by name) but is no encoder."""
    repo = _saved_sasrec(tmp_path / "repo")
    adapter = {
        "class_path": "lightning_rec.modules.adapter_finetune.AdapterFineTune",
        "init_args": {"base_model": "attacker/model"},
    }
    _edit_config(repo, lambda config: config["init_args"].update(encoder=adapter))
    sealed.start()
    with pytest.raises(UntrustedClassError, match=r"not a lightning_rec\.blocks\.sequence\.SequenceEncoder"):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched()


def test_another_trusted_class_at_the_root_is_refused_before_anything_is_built(tmp_path, sealed):
    repo = _saved_sasrec(tmp_path / "repo")
    sealed.start()
    with pytest.raises(UntrustedClassError, match=r"not a lightning_rec\.blocks\.sequence\.SASRec"):
        SASRecEncoder.from_pretrained(repo)
    sealed.assert_untouched()


def test_unknown_argument_is_refused_before_anything_is_built(tmp_path, sealed):
    repo = _saved_sasrec(tmp_path / "repo")
    _edit_config(repo, lambda config: config["init_args"]["encoder"]["init_args"].update(command="ls"))
    sealed.start()
    with pytest.raises(ValueError, match=r"takes no arguments \['command'\]"):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched()


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_only_repo_is_refused_without_unpickling(tmp_path, sealed):
    repo = _saved_sasrec(tmp_path / "repo")
    (repo / "model.safetensors").unlink()
    (repo / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(str(tmp_path / "unpickled"))))
    sealed.start()
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched()


def _huge_header(path: Path) -> None:
    """A safetensors file whose header claims to be 1 TB long."""
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")


def test_safetensors_header_claiming_a_terabyte_is_refused(tmp_path, sealed):
    repo = _saved_sasrec(tmp_path / "repo")
    _huge_header(repo / "model.safetensors")
    sealed.start()
    with pytest.raises(SafetensorError, match="header too large"):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched(builds_allowed=True)  # the (trusted) model is built before its weights load


def test_config_with_huge_sizes_is_refused_before_it_allocates(tmp_path, sealed):
    """6 million items x 16 floats would be 384 MB; the weights on disk are a few kB."""
    repo = _saved_sasrec(tmp_path / "repo")
    _edit_config(repo, lambda config: config["init_args"]["encoder"]["init_args"].update(num_items=6_000_000))
    sealed.start()
    with pytest.raises(
        RuntimeError, match=r"checked before building it.*item_embedding\.weight is \(\d+, 16\)"
    ):
        SASRec.from_pretrained(repo)
    sealed.assert_untouched(builds_allowed=True)  # built on the meta device only


@pytest.mark.parametrize(
    "vocab, message",
    [
        (["not", "an", "object"], "expected a JSON object"),
        ({"item_ids": [1, 2, 3]}, "'item_ids' must be a list of strings"),
        ({"item_ids": ["[PAD]", "a"], "item_title": ["only one"]}, "'item_title' must be a list as long"),
        ({"item_ids": ["[PAD]", {"class_path": "os.system"}]}, "'item_ids' must be a list of strings"),
        ({"item_ids": ["[PAD]", "a"], "item_title": "a string"}, "must be a list or an object"),
    ],
)
def test_malformed_vocab_is_refused(vocab, message, tmp_path):
    repo = _saved_sasrec(tmp_path / "repo")
    (repo / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=message):
        SASRec.from_pretrained(repo)


@pytest.mark.parametrize("name", ["config.json", "vocab.json"])
def test_oversized_json_is_refused_before_it_is_parsed(name, tmp_path, monkeypatch):
    repo = _saved_sasrec(tmp_path / "repo")
    limit = (repo / name).stat().st_size - 1
    monkeypatch.setattr(hub_mixin, "MAX_JSON_BYTES", limit)
    with pytest.raises(ValueError, match=f"more than the {limit} allowed"):
        SASRec.from_pretrained(repo)


# --------------------------------------------------------------------------- PEFT layout, load_smoa
class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)


def _saved_smoa(folder: Path) -> Path:
    torch.manual_seed(0)
    save_smoa(inject_smoa(_TwoLayers(), ["query", "value"], r=4, num_blocks=2), folder)
    return folder


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("r", 1 << 40, "exceeds every dimension"),
        ("r", "4; rm -rf /", "positive integer"),
        ("lora_dropout", 2.0, r"\[0, 1\)"),
        ("target_modules", {"class_path": "os.system"}, "list of names or a string"),
        ("target_modules", "(q+)+$", "must be a list of module names"),  # a regex never reaches re
        ("modules_to_save", "classifier", "list of names or null"),
    ],
)
def test_hostile_adapter_config_is_refused_before_any_layer_is_built(field, value, message, tmp_path, sealed):
    folder = _saved_smoa(tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    config[field] = value
    (folder / "adapter_config.json").write_text(json.dumps(config))
    base = _TwoLayers()
    sealed.start()
    with pytest.raises(ValueError, match=message):
        load_smoa(base, folder)
    sealed.assert_untouched()
    assert type(base.query) is nn.Linear  # nothing was injected


def test_pickle_only_adapter_is_refused_without_unpickling(tmp_path, sealed):
    folder = _saved_smoa(tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Exploit(str(tmp_path / "unpickled"))))
    base = _TwoLayers()
    sealed.start()
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.bin"):
        load_smoa(base, folder)
    sealed.assert_untouched()


def test_adapter_with_a_terabyte_header_is_refused(tmp_path, sealed):
    folder = _saved_smoa(tmp_path / "adapter")
    _huge_header(folder / "adapter_model.safetensors")
    base = _TwoLayers()
    sealed.start()
    with pytest.raises(SafetensorError, match="header too large"):
        load_smoa(base, folder)
    sealed.assert_untouched()


# ------------------------------------------------------------------------- lightning-rec push
def test_push_refuses_a_pickled_checkpoint_without_unpickling(tmp_path, sealed):
    from lightning_rec.cli import main

    checkpoint = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(str(tmp_path / "unpickled"))}, checkpoint)
    sealed.start()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        main(["push", "--ckpt_path", str(checkpoint), "--repo_id", "org/x", "--token", "t"])
    sealed.assert_untouched()


def test_push_refuses_a_checkpoint_naming_a_reader(tmp_path, sealed):
    from lightning_rec.cli import main

    checkpoint = tmp_path / "hostile.ckpt"
    tree = {"class_path": RECBOLE, "init_args": {"cache_dir": str(tmp_path / "attacker")}}
    torch.save({"state_dict": {}, "lightning_rec_config": tree}, checkpoint)
    sealed.start()
    with pytest.raises(UntrustedClassError, match="refusing"):
        main(["push", "--ckpt_path", str(checkpoint), "--repo_id", "org/x", "--token", "t"])
    sealed.assert_untouched()


# ------------------------------------------------------------------------------- score cache
def _cache_file(tmp_path: Path) -> Path:
    cache = ScoreCache(width=2, judge_version="v1", directory=tmp_path / "scores")
    cache.get_or_compute(["u1", "u2"], ["a", "b"], lambda positions: torch.ones(len(positions), 2))
    cache.save()
    return cache.path


@pytest.mark.parametrize(
    "tensors, keys, message",
    [
        ({"scores": torch.ones(2, 2)}, [["u1", "a"], ["u2", 3]], "string pairs"),
        ({"scores": torch.ones(2, 2)}, {"u1": "a"}, "string pairs"),
        ({"scores": torch.ones(2, 2, dtype=torch.int64)}, [["u1", "a"], ["u2", "b"]], "float32"),
        ({"scores": torch.full((2, 2), float("nan"))}, [["u1", "a"], ["u2", "b"]], "finite"),
        ({"scores": torch.ones(2, 2), "extra": torch.ones(1)}, [["u1", "a"], ["u2", "b"]], "only 'scores'"),
        ({"scores": torch.ones(3, 2)}, [["u1", "a"], ["u2", "b"]], "expected"),
    ],
)
def test_tampered_score_cache_is_refused(tensors, keys, message, tmp_path):
    path = _cache_file(tmp_path)
    metadata = {"format": "1", "judge_version": "v1", "name": "scores", "width": "2"}
    metadata["keys"] = json.dumps(keys)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=message):
        ScoreCache(width=2, judge_version="v1", directory=tmp_path / "scores")


def test_score_cache_round_trips(tmp_path):
    _cache_file(tmp_path)
    cache = ScoreCache(width=2, judge_version="v1", directory=tmp_path / "scores")
    assert len(cache) == 2 and ("u2", "b") in cache


@pytest.mark.parametrize("argument", [{"pretrained": "attacker/judge"}, {"score_cache_dir": "/tmp/attacker"}])
def test_a_judge_reward_in_a_downloaded_config_cannot_load_weights_or_name_a_cache(
    argument, tmp_path, sealed
):
    """JudgeReward's own constructor reads a .ckpt or fetches a repo (``pretrained``) and names a cache
    folder; a downloaded config builds it through a function that takes neither."""
    from lightning_rec.blocks import DiffusionHead, PersonalizedSemanticJudge
    from lightning_rec.modules import DiffuReason, JudgeReward

    model = DiffuReason(
        encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=8),
        diffusion=DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4),
        group_size=2,
        reward_model=JudgeReward(judge=PersonalizedSemanticJudge(user_dim=8, hidden_size=16)),
    )
    model.save_pretrained(tmp_path / "repo")
    DiffuReason.from_pretrained(tmp_path / "repo")  # the saved config itself loads
    _edit_config(
        tmp_path / "repo", lambda config: config["init_args"]["reward_model"]["init_args"].update(argument)
    )
    sealed.start()
    with pytest.raises(ValueError, match=rf"takes no arguments \['{next(iter(argument))}'\]"):
        DiffuReason.from_pretrained(tmp_path / "repo")
    sealed.assert_untouched()
