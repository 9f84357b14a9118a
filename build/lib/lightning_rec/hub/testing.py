"""A Hub-compatible HTTP server on localhost, so tests can push to and pull from "the Hub" offline.

:class:`LocalHub` answers the part of the Hugging Face Hub HTTP API that the real ``huggingface_hub``
client uses to create a model repo, commit files to it (``upload_folder``, ``upload_file``,
``create_commit``, ``delete_file``), describe it (``model_info``, ``repo_exists``,
``list_repo_files``, ``list_repo_tree``, ``whoami``) and download from it (``hf_hub_download``,
``snapshot_download``). :func:`hub_endpoint` points an already-imported ``huggingface_hub`` at it.
Our own tests use the pair through the ``local_hub`` fixture, and we offer it to users for their
offline CI, where publishing code should run the real client end to end without a network::

    from huggingface_hub import HfApi, hf_hub_download

    from lightning_rec.hub.testing import LocalHub, hub_endpoint

    with LocalHub() as hub, hub_endpoint(hub.url):
        HfApi().create_repo("org/sasrec")
        HfApi().upload_folder(repo_id="org/sasrec", folder_path="checkpoint/")
        config = hf_hub_download("org/sasrec", "config.json", cache_dir=tmp_cache)
    assert hub.files("org/sasrec")["config.json"] == open("checkpoint/config.json", "rb").read()

Point the client's cache at a temporary folder as well (``cache_dir=`` or
``huggingface_hub.constants.HF_HUB_CACHE``): repos of the local Hub would otherwise land in the
user's real cache under the same names as real repos.

What the local Hub is not: it keeps everything in memory, serves model repos only, has one branch
(``main``; every commit sha is also a read-only revision), stores every file as a regular git file
(never LFS, never Xet), opens no pull requests, reads no model-card metadata (``cardData`` is absent)
and accepts any token without checking it. A route it does not know answers 404 and is logged as a
warning naming the method and path, so a client feature it lacks is obvious.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, unquote, urlsplit

from huggingface_hub import constants, hf_api

__all__ = ["LocalHub", "hub_endpoint"]

logger = logging.getLogger(__name__)

# Namespace of repos created without an organization, and the user `/api/whoami-v2` describes.
_LOCAL_USER = "local-user"
# The only branch; commits always go to it.
_MAIN = "main"


def _git_blob_oid(content: bytes) -> str:
    """The git object id of a file: the Hub's ``oid`` and ``ETag`` of a regular (non-LFS) file.

    The client compares it with its own ``git_hash`` of a local file to skip unchanged uploads, and
    names the cached blob after the ETag.
    """
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


def _hub_timestamp(moment: datetime) -> str:
    """The Hub's date format, the only one ``huggingface_hub.utils.parse_datetime`` reads."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Commit:
    sha: str
    summary: str
    date: datetime
    files: Mapping[str, bytes]  # the whole tree at this commit: path in repo -> content


@dataclass
class _Repo:
    repo_id: str
    private: bool
    created_at: datetime
    commits: list[_Commit]  # oldest first; the last one is the head of `main`

    def commit(self, summary: str, files: Mapping[str, bytes]) -> _Commit:
        """Append a commit holding `files` as the new head of `main`."""
        date = datetime.now(timezone.utc)
        parent = self.commits[-1].sha if self.commits else ""
        tree = sorted((path, _git_blob_oid(content)) for path, content in files.items())
        identity = json.dumps([self.repo_id, parent, summary, date.isoformat(), tree]).encode()
        commit = _Commit(
            sha=hashlib.sha1(identity, usedforsecurity=False).hexdigest(),
            summary=summary,
            date=date,
            files=dict(files),
        )
        self.commits.append(commit)
        return commit

    def at(self, revision: str) -> _Commit | None:
        """The commit `revision` names: ``"main"`` (the head) or a full commit sha."""
        if revision == _MAIN:
            return self.commits[-1]
        return next((commit for commit in self.commits if commit.sha == revision), None)


@dataclass(frozen=True)
class _Request:
    method: str
    path_params: dict[str, str]  # named groups of the route pattern, percent-decoded
    query: dict[str, list[str]]
    body: bytes


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    body: bytes
    headers: Mapping[str, str]


def _json_response(
    payload: object, status: HTTPStatus = HTTPStatus.OK, headers: Mapping[str, str] | None = None
) -> _Response:
    return _Response(
        status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


class _HubError(Exception):
    """An error answer: the status, the ``X-Error-Code`` the client maps to an exception, a message."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}

    def response(self) -> _Response:
        # HEAD answers carry no body, so the message also travels in `X-Error-Message`, which the
        # client adds to its exception text (ASCII-escaped: header values must be Latin-1).
        headers = {
            "X-Error-Message": self.message.encode("ascii", "backslashreplace").decode(),
            **self.headers,
        }
        if self.error_code is not None:
            headers["X-Error-Code"] = self.error_code
        return _json_response({"error": self.message}, self.status, headers)


def _json_body(request: _Request) -> dict:
    try:
        payload = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _HubError(HTTPStatus.BAD_REQUEST, f"request body is not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise _HubError(HTTPStatus.BAD_REQUEST, f"expected a JSON object, got {type(payload).__name__}")
    return payload


def _reject_pull_request(request: _Request) -> None:
    if request.query.get("create_pr", ["0"])[-1] not in ("", "0", "false"):
        raise _HubError(HTTPStatus.BAD_REQUEST, "LocalHub does not open pull requests (create_pr=1)")


def _commit_at(repo: _Repo, revision: str) -> _Commit:
    """The commit a read route names, or the answer the client maps to `RevisionNotFoundError`."""
    commit = repo.at(revision)
    if commit is None:
        raise _HubError(
            HTTPStatus.NOT_FOUND,
            f"Invalid rev id: {revision!r} (LocalHub knows 'main' and full commit shas)",
            "RevisionNotFound",
        )
    return commit


def _branch_head(repo: _Repo, revision: str) -> _Commit:
    """The head a write route commits onto: writes go to `main`, the only branch."""
    if revision != _MAIN:
        raise _HubError(
            HTTPStatus.NOT_FOUND,
            f"LocalHub commits to the branch 'main' only, got revision {revision!r}",
            "RevisionNotFound",
        )
    return repo.commits[-1]


def _tree_entries(files: Mapping[str, bytes], folder: str, recursive: bool) -> list[dict[str, object]]:
    """The ``/tree`` listing of `folder` ("" for the root): its files and folders, or all below it."""
    prefix = f"{folder}/" if folder else ""
    entries: dict[str, dict[str, object]] = {}
    for path, content in files.items():
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            folder_path = prefix + "/".join(parts[:depth])
            if folder_path not in entries:
                inside = sorted(
                    (p, _git_blob_oid(c)) for p, c in files.items() if p.startswith(folder_path + "/")
                )
                folder_oid = hashlib.sha1(json.dumps(inside).encode(), usedforsecurity=False).hexdigest()
                entries[folder_path] = {"type": "directory", "path": folder_path, "oid": folder_oid}
        if recursive or len(parts) == 1:
            entries[path] = {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": _git_blob_oid(content),
            }
    return [entries[path] for path in sorted(entries)]


class LocalHub:
    """An in-memory Hugging Face Hub for tests, served over HTTP on a background thread.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`) together with
    :func:`hub_endpoint`; see the module docstring for what it serves. Repos and their commits
    outlive :meth:`stop`, so a test can inspect them, or check that the client's cache works
    without the server.

    Args:
        host: Interface to listen on.
        port: Port to listen on; 0 picks a free one, which :attr:`url` then reports.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._repos: dict[str, _Repo] = {}
        self._lock = threading.Lock()  # guards `_repos`: the server answers each request on its own thread
        self._server: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The endpoint, e.g. ``"http://127.0.0.1:54321"``; only known once started."""
        if self._server is None:
            raise RuntimeError(
                "LocalHub is not running: call start() or enter it with `with LocalHub() as hub:`"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        """Bind the port and serve requests on a daemon thread until :meth:`stop`."""
        if self._server is not None:
            raise RuntimeError(f"LocalHub is already running at {self.url}")
        self._server = _HubHTTPServer(self._address, self)
        # A short poll interval keeps `stop()` (which waits for the serving loop to notice) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="LocalHub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port; stopping a hub that is not running does nothing."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def commits(self, repo_id: str) -> list[str]:
        """The commit shas of `repo_id`, oldest first; the first one is the commit that created it."""
        with self._lock:
            return [commit.sha for commit in self._known_repo(repo_id).commits]

    def files(self, repo_id: str, revision: str = _MAIN) -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (``"main"`` or a commit sha): path in repo -> content."""
        with self._lock:
            repo = self._known_repo(repo_id)
            commit = repo.at(revision)
            if commit is None:
                shas = [known.sha for known in repo.commits]
                raise KeyError(f"repo {repo_id!r} has no revision {revision!r}; its commits are {shas}")
            return dict(commit.files)

    def _known_repo(self, repo_id: str) -> _Repo:
        if repo_id not in self._repos:
            raise KeyError(f"LocalHub has no repo {repo_id!r}; it has {sorted(self._repos)}")
        return self._repos[repo_id]

    def _repo(self, repo_id: str) -> _Repo:
        """The repo a route names, or the answer the client maps to `RepositoryNotFoundError`."""
        if repo_id not in self._repos:
            raise _HubError(HTTPStatus.NOT_FOUND, f"Repository {repo_id!r} not found", "RepoNotFound")
        return self._repos[repo_id]

    # Routes, in the order of `_ROUTES`.

    def _create_repo(self, request: _Request) -> _Response:
        payload = _json_body(request)
        name = payload.get("name")
        if not isinstance(name, str) or not name:
            raise _HubError(HTTPStatus.BAD_REQUEST, f"expected a repo 'name', got {name!r}")
        if payload.get("type", "model") not in (None, "model"):
            raise _HubError(
                HTTPStatus.BAD_REQUEST, f"LocalHub serves model repos only, got type {payload['type']!r}"
            )
        repo_id = f"{payload.get('organization') or _LOCAL_USER}/{name}"
        repo_url = f"{self.url}/{repo_id}"
        with self._lock:
            if repo_id in self._repos:
                # `create_repo(exist_ok=True)` reads `url` from this 409 answer too.
                return _json_response(
                    {"error": "You already created this model repo", "url": repo_url}, HTTPStatus.CONFLICT
                )
            # Older clients send `private: bool`, newer ones `visibility`.
            private = payload.get("visibility") == "private" or payload.get("private") is True
            repo = _Repo(repo_id, private, datetime.now(timezone.utc), commits=[])
            repo.commit("initial commit", {})
            self._repos[repo_id] = repo
        return _json_response({"url": repo_url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, request: _Request) -> _Response:
        return _json_response({"errors": [], "warnings": []})

    def _whoami(self, request: _Request) -> _Response:
        return _json_response(
            {
                "type": "user",
                "name": _LOCAL_USER,
                "fullname": "LocalHub user",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            }
        )

    def _model_info(self, request: _Request) -> _Response:
        with self._lock:
            repo = self._repo(request.path_params["repo_id"])
            commit = _commit_at(repo, request.path_params.get("revision", _MAIN))
        return _json_response(
            {
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": _hub_timestamp(commit.date),
                "createdAt": _hub_timestamp(repo.created_at),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [
                    {"rfilename": path, "size": len(content), "blobId": _git_blob_oid(content)}
                    for path, content in sorted(commit.files.items())
                ],
            }
        )

    def _tree(self, request: _Request) -> _Response:
        with self._lock:
            commit = _commit_at(self._repo(request.path_params["repo_id"]), request.path_params["revision"])
        folder = request.path_params.get("folder", "").strip("/")
        recursive = request.query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        entries = _tree_entries(commit.files, folder, recursive)
        if folder and not entries:
            raise _HubError(
                HTTPStatus.NOT_FOUND, f"Folder {folder!r} not found at {commit.sha}", "EntryNotFound"
            )
        # One page holds the whole listing: no `Link: rel="next"` header, so the client stops here.
        return _json_response(entries)

    def _preupload(self, request: _Request) -> _Response:
        _reject_pull_request(request)
        files = _json_body(request).get("files")
        if not isinstance(files, list) or not all(isinstance(f, dict) and "path" in f for f in files):
            raise _HubError(
                HTTPStatus.BAD_REQUEST, f"expected 'files': [{{'path': ...}}, ...], got {files!r}"
            )
        with self._lock:
            head = _branch_head(self._repo(request.path_params["repo_id"]), request.path_params["revision"])
        # "regular" for every file: the commit then carries the bytes inline (base64), so neither
        # the LFS batch API nor Xet storage is ever involved. `oid` lets the client skip files
        # whose content the head already has.
        return _json_response(
            {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": _git_blob_oid(head.files[f["path"]]) if f["path"] in head.files else None,
                    }
                    for f in files
                ],
                "commitOid": head.sha,
            }
        )

    def _create_commit(self, request: _Request) -> _Response:
        _reject_pull_request(request)
        try:
            lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _HubError(HTTPStatus.BAD_REQUEST, f"commit body is not NDJSON: {error}") from error
        if not all(isinstance(line, dict) for line in lines):
            raise _HubError(HTTPStatus.BAD_REQUEST, "every commit line must be a JSON object")
        if not lines or lines[0].get("key") != "header" or not isinstance(lines[0].get("value"), dict):
            raise _HubError(
                HTTPStatus.BAD_REQUEST, "a commit starts with a {'key': 'header', 'value': {...}} line"
            )
        header = lines[0]["value"]
        repo_id = request.path_params["repo_id"]
        with self._lock:
            repo = self._repo(repo_id)
            head = _branch_head(repo, request.path_params["revision"])
            parent = header.get("parentCommit")
            if parent is not None and parent != head.sha:
                raise _HubError(
                    HTTPStatus.PRECONDITION_FAILED,
                    f"parentCommit {parent} is not the head of main ({head.sha}): a commit happened since",
                )
            files = dict(head.files)
            for operation in lines[1:]:
                _apply_operation(files, operation)
            commit = repo.commit(header.get("summary", ""), files)
        return _json_response(
            {
                "commitUrl": f"{self.url}/{repo_id}/commit/{commit.sha}",
                "commitOid": commit.sha,
                "pullRequestUrl": None,
            }
        )

    def _resolve(self, request: _Request) -> _Response:
        path = request.path_params["path"]
        with self._lock:
            commit = _commit_at(self._repo(request.path_params["repo_id"]), request.path_params["revision"])
        if path not in commit.files:
            # `X-Repo-Commit` on the 404 lets the client cache that the file does not exist there.
            raise _HubError(
                HTTPStatus.NOT_FOUND,
                f"Entry {path!r} not found at {commit.sha}",
                "EntryNotFound",
                {constants.HUGGINGFACE_HEADER_X_REPO_COMMIT: commit.sha},
            )
        content = commit.files[path]
        return _Response(
            HTTPStatus.OK,
            content,
            {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{_git_blob_oid(content)}"',
                constants.HUGGINGFACE_HEADER_X_REPO_COMMIT: commit.sha,
            },
        )

    def _answer(self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes) -> _Response:
        """Route one request; HEAD is answered like GET, without the body."""
        route_method = "GET" if method == "HEAD" else method
        for methods, pattern, route in _ROUTES:
            match = pattern.fullmatch(raw_path)
            if route_method in methods and match is not None:
                path_params = {
                    key: unquote(value) for key, value in match.groupdict().items() if value is not None
                }
                try:
                    return route(self, _Request(method, path_params, query, body))
                except _HubError as error:
                    return error.response()
        logger.warning("LocalHub has no route for %s %s", method, raw_path)
        return _HubError(HTTPStatus.NOT_FOUND, f"LocalHub has no route for {method} {raw_path}").response()


def _apply_operation(files: dict[str, bytes], operation: dict) -> None:
    """Apply one NDJSON line of a commit (see ``huggingface_hub._commit_api``) to `files`."""
    key, value = operation.get("key"), operation.get("value")
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not path:
        raise _HubError(HTTPStatus.BAD_REQUEST, f"commit operation without a 'path': {operation!r}")
    if key == "file":
        if value.get("encoding") != "base64":
            raise _HubError(
                HTTPStatus.BAD_REQUEST, f"expected base64 content for {path!r}, got {value.get('encoding')!r}"
            )
        try:
            files[path] = base64.b64decode(value.get("content", ""), validate=True)
        except binascii.Error as error:
            raise _HubError(HTTPStatus.BAD_REQUEST, f"content of {path!r} is not base64: {error}") from error
    elif key == "deletedFile":
        if path not in files:
            # The client recognises this sentence to hint at folder deletions.
            raise _HubError(
                HTTPStatus.NOT_FOUND, f"A file with this name doesn't exist: {path!r}", "EntryNotFound"
            )
        del files[path]
    elif key == "deletedFolder":
        prefix = path.rstrip("/") + "/"
        for inside in [p for p in files if p.startswith(prefix)]:
            del files[inside]
    elif key == "lfsFile":
        raise _HubError(
            HTTPStatus.BAD_REQUEST,
            f"LocalHub stores no LFS files ({path!r}); preupload answers 'regular' for all",
        )
    else:
        raise _HubError(HTTPStatus.BAD_REQUEST, f"unknown commit operation {key!r}")


# A repo id is `namespace/name`; the namespace is optional so that a bare name reaches the routes
# and gets a RepoNotFound answer rather than an unknown-route one.
_REPO = r"(?P<repo_id>(?:[^/]+/)?[^/]+)"
_ROUTES: tuple[tuple[tuple[str, ...], re.Pattern[str], Callable[[LocalHub, _Request], _Response]], ...] = (
    (("POST",), re.compile(r"/api/repos/create"), LocalHub._create_repo),
    (("POST",), re.compile(r"/api/validate-yaml"), LocalHub._validate_yaml),
    (("GET",), re.compile(r"/api/whoami-v2"), LocalHub._whoami),
    (("GET",), re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<revision>[^/]+))?"), LocalHub._model_info),
    (
        ("GET",),
        re.compile(rf"/api/models/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<folder>.*))?"),
        LocalHub._tree,
    ),
    (("POST",), re.compile(rf"/api/models/{_REPO}/preupload/(?P<revision>[^/]+)"), LocalHub._preupload),
    (("POST",), re.compile(rf"/api/models/{_REPO}/commit/(?P<revision>[^/]+)"), LocalHub._create_commit),
    (("GET",), re.compile(rf"/{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)"), LocalHub._resolve),
)


class _HubHTTPServer(ThreadingHTTPServer):
    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        super().__init__(address, _HubRequestHandler)
        self.hub = hub


class _HubRequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection. A stopped hub then leaves no kept-alive connection
    # behind that a handler thread would go on answering.
    protocol_version = "HTTP/1.0"
    server: _HubHTTPServer

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        url = urlsplit(self.path)
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            response = _HubError(
                HTTPStatus.LENGTH_REQUIRED, "LocalHub reads bodies by Content-Length only"
            ).response()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                response = self.server.hub._answer(self.command, url.path, parse_qs(url.query), body)
            except Exception as error:
                # A bug of the local Hub, not of the client: log it here, where the traceback is.
                logger.exception("LocalHub failed on %s %s", self.command, self.path)
                response = _HubError(
                    HTTPStatus.INTERNAL_SERVER_ERROR, f"LocalHub failed: {error!r}"
                ).response()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("LocalHub: " + format, *args)


@contextmanager
def hub_endpoint(url: str) -> Iterator[None]:
    """Point the already-imported ``huggingface_hub`` at the Hub served at `url`, and restore it on exit.

    ``huggingface_hub`` reads its settings from environment variables once, at import, into
    ``huggingface_hub.constants``; setting ``HF_ENDPOINT`` later changes nothing in this process.
    Inside the context:

    - the endpoint is `url`: ``constants.ENDPOINT``, the download URL template, the hosts whose web
      URLs parse as repo URLs, and the module-level ``HfApi`` behind ``huggingface_hub.model_info``
      and friends. ``HfApi()`` instances created inside use it; ones created before keep theirs;
    - offline mode is off, whatever ``HF_HUB_OFFLINE`` said;
    - Xet is off (uploads and downloads use plain HTTP) and so is telemetry (no request goes to
      ``/api/telemetry`` or to the agent registry);
    - implicit tokens are off: the user's saved or ``HF_TOKEN`` token is neither sent nor refreshed.
      Pass ``token=...`` where a call needs one (``whoami``); the local Hub accepts any token.

    The same settings go to ``os.environ`` for child processes. The Hub cache is left alone: point
    it at a temporary folder too (see the module docstring).
    """
    endpoint = url.rstrip("/")
    overrides: list[tuple[object, str, object]] = [
        (constants, "ENDPOINT", endpoint),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {urlsplit(endpoint).hostname}),
        (constants, "HF_HUB_OFFLINE", False),
        (constants, "HF_HUB_DISABLE_XET", True),
        (constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True),
        (hf_api.api, "endpoint", endpoint),
    ]
    environment = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    }
    saved_attributes = [(target, name, getattr(target, name)) for target, name, _ in overrides]
    saved_environment = {name: os.environ.get(name) for name in environment}
    for target, name, value in overrides:
        setattr(target, name, value)
    os.environ.update(environment)
    try:
        yield
    finally:
        for target, name, value in saved_attributes:
            setattr(target, name, value)
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
