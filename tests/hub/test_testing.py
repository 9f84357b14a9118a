"""LocalHub + hub_endpoint, driven by the real ``huggingface_hub`` client end to end."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from huggingface_hub import (
    HfApi,
    constants,
    hf_api,
    hf_hub_download,
    model_info,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lightning_rec.hub.testing import LocalHub, hub_endpoint

REPO = "org/m"
CHECKPOINT = {
    "config.json": b'{"hidden_size": 32, "num_items": 100}',
    "model.safetensors": bytes(range(256)) * 4,
    "checkpoints/last.bin": b"\x00\xffweights\x00",
    "README.md": b"---\nlicense: apache-2.0\n---\n# SASRec\n",
}


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return root


def upload(tmp_path: Path, name: str, files: dict[str, bytes]) -> str:
    """Upload `files` as one commit to REPO; returns the commit sha the client reports."""
    folder = write_folder(tmp_path / name, files)
    return HfApi().upload_folder(repo_id=REPO, folder_path=folder).oid


def test_create_repo_conflicts_unless_exist_ok(local_hub: LocalHub) -> None:
    api = HfApi()
    repo_url = api.create_repo(REPO)
    assert repo_url.repo_id == REPO
    assert str(repo_url) == f"{local_hub.url}/{REPO}"
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(REPO)
    assert conflict.value.response.status_code == 409
    assert len(local_hub.commits(REPO)) == 1  # the creation commit, with no files
    assert api.repo_exists(REPO) and not api.repo_exists("org/other")


def test_upload_then_download_gives_identical_bytes(local_hub: LocalHub, tmp_path: Path) -> None:
    HfApi().create_repo(REPO)
    sha = upload(tmp_path, "v1", CHECKPOINT)

    assert local_hub.commits(REPO)[-1] == sha
    assert local_hub.files(REPO) == CHECKPOINT
    for path, content in CHECKPOINT.items():
        assert Path(hf_hub_download(REPO, path)).read_bytes() == content
    assert sorted(HfApi().list_repo_files(REPO)) == sorted(CHECKPOINT)
    info = model_info(REPO)  # the module-level HfApi follows the endpoint too
    assert info.sha == sha
    assert sorted(sibling.rfilename for sibling in info.siblings) == sorted(CHECKPOINT)
    top_level = {entry.path: type(entry).__name__ for entry in HfApi().list_repo_tree(REPO)}
    assert top_level == {
        "README.md": "RepoFile",
        "config.json": "RepoFile",
        "model.safetensors": "RepoFile",
        "checkpoints": "RepoFolder",
    }
    assert [entry.path for entry in HfApi().list_repo_tree(REPO, "checkpoints")] == ["checkpoints/last.bin"]


def test_snapshot_download_gets_every_file(local_hub: LocalHub, tmp_path: Path) -> None:
    HfApi().create_repo(REPO)
    sha = upload(tmp_path, "v1", CHECKPOINT)

    snapshot = Path(snapshot_download(REPO))
    assert snapshot.name == sha
    files = (path for path in snapshot.rglob("*") if path.is_file())
    assert {path.relative_to(snapshot).as_posix(): path.read_bytes() for path in files} == CHECKPOINT


def test_changed_upload_is_a_new_commit_and_old_sha_keeps_old_bytes(
    local_hub: LocalHub, tmp_path: Path
) -> None:
    HfApi().create_repo(REPO)
    first = upload(tmp_path, "v1", CHECKPOINT)
    second = upload(tmp_path, "v2", {**CHECKPOINT, "config.json": b'{"hidden_size": 64}'})

    assert first != second
    assert local_hub.commits(REPO)[-2:] == [first, second]
    assert HfApi().model_info(REPO).sha == second
    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b'{"hidden_size": 64}'
    old = Path(hf_hub_download(REPO, "config.json", revision=first)).read_bytes()
    assert old == CHECKPOINT["config.json"]
    assert local_hub.files(REPO, revision=first) == CHECKPOINT


def test_unchanged_upload_makes_no_commit(local_hub: LocalHub, tmp_path: Path) -> None:
    # preupload reports each file's oid; the client then skips what the head already holds.
    HfApi().create_repo(REPO)
    first = upload(tmp_path, "v1", CHECKPOINT)
    assert upload(tmp_path, "again", CHECKPOINT) == first
    assert local_hub.commits(REPO)[-1] == first


def test_delete_file_is_a_commit_without_the_file(local_hub: LocalHub, tmp_path: Path) -> None:
    HfApi().create_repo(REPO)
    first = upload(tmp_path, "v1", CHECKPOINT)
    HfApi().delete_file("checkpoints/last.bin", REPO)

    assert "checkpoints/last.bin" not in HfApi().list_repo_files(REPO)
    assert "checkpoints/last.bin" in HfApi().list_repo_files(REPO, revision=first)
    with pytest.raises(EntryNotFoundError):
        HfApi().delete_file("checkpoints/last.bin", REPO)


def test_cached_files_are_served_offline_after_the_hub_stops(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    HfApi().create_repo(REPO)
    upload(tmp_path, "v1", CHECKPOINT)
    snapshot = Path(snapshot_download(REPO))
    local_hub.stop()

    with monkeypatch.context() as offline:
        offline.setattr(constants, "HF_HUB_OFFLINE", True)
        assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == CHECKPOINT["config.json"]
        assert Path(snapshot_download(REPO)) == snapshot


def test_missing_file_repo_and_revision_raise_the_client_errors(local_hub: LocalHub, tmp_path: Path) -> None:
    HfApi().create_repo(REPO)
    upload(tmp_path, "v1", CHECKPOINT)

    with pytest.raises(RemoteEntryNotFoundError):  # not the Local* variant: the Hub said "no such file"
        hf_hub_download(REPO, "missing.bin")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/missing", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("org/missing")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="0" * 40)
    with pytest.raises(KeyError, match="org/missing"):
        local_hub.commits("org/missing")


def test_unknown_route_is_a_logged_404(local_hub: LocalHub, caplog: pytest.LogCaptureFixture) -> None:
    HfApi().create_repo(REPO)
    with caplog.at_level(logging.WARNING, logger="lightning_rec.hub.testing"):
        with pytest.raises(HfHubHTTPError) as missing:
            HfApi().list_repo_refs(REPO)
    assert missing.value.response.status_code == 404
    assert f"no route for GET /api/models/{REPO}/refs" in caplog.text


def test_whoami_names_the_namespace_of_repos_created_without_one(local_hub: LocalHub, hub_token: str) -> None:
    user = HfApi().whoami(token=hub_token)["name"]
    assert HfApi().create_repo("solo").repo_id == f"{user}/solo"


def test_hub_endpoint_restores_the_client_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")
    before = {name: getattr(constants, name) for name in names}
    api_endpoint = hf_api.api.endpoint

    with hub_endpoint("http://127.0.0.1:1/"):
        assert constants.ENDPOINT == "http://127.0.0.1:1"
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith("http://127.0.0.1:1/{repo_id}/resolve/")
        assert constants.HF_HUB_OFFLINE is False and constants.HF_HUB_DISABLE_XET is True
        assert HfApi().endpoint == hf_api.api.endpoint == "http://127.0.0.1:1"
        assert os.environ["HF_ENDPOINT"] == "http://127.0.0.1:1" and os.environ["HF_HUB_OFFLINE"] == "0"

    assert {name: getattr(constants, name) for name in names} == before
    assert hf_api.api.endpoint == api_endpoint
    assert os.environ["HF_HUB_OFFLINE"] == "1" and "HF_ENDPOINT" not in os.environ
