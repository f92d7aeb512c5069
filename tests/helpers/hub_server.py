"""A small Hugging Face Hub on 127.0.0.1, for testing uploads through huggingface_hub's own client.

It implements the endpoints the client's commit path calls with Xet disabled
(``HF_HUB_DISABLE_XET``, the legacy LFS path): repo creation, revision info, the
recursive tree listing, paths-info, preupload (regular vs LFS, with the remote oid the
client compares against), the LFS batch API with basic transfer (one PUT per object),
YAML validation and the NDJSON commit with ``parentCommit`` checks (412 when the branch
moved). Faults are injected on demand: 429s with ``Retry-After``, a foreign commit that
moves the branch before one of ours, and an LFS store that fails after k uploads.
Everything it receives is counted, so a test can tell what was sent twice.

Model repositories (public, read-only: what a build downloads) are added with
:meth:`FakeHub.add_model` at a chosen commit, and served through the endpoints
huggingface_hub's download path calls: ``model_info`` (``/api/models/ID[/revision/REV]``,
``blobs=true`` adding sizes and LFS hashes), the recursive tree listing ``snapshot_download``
reads, and ``HEAD``/``GET /ID/resolve/REV/PATH`` with the headers ``hf_hub_download`` needs
(``X-Repo-Commit``, ``ETag``, and ``X-Linked-Etag``/``X-Linked-Size`` for LFS files; a missing
file answers 404 with ``X-Error-Code: EntryNotFound``). :meth:`FakeHub.resolve_elsewhere` makes a
revision resolve to another commit (a mirror serving the wrong snapshot). Every file GET is
recorded in ``downloads``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_SUFFIXES = (".parquet", ".png", ".jpg", ".jpeg", ".webp", ".arrow", ".bin", ".safetensors")
LFS_MIN_BYTES = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    size: int
    blob_id: str
    sha256: str | None = None  # set for LFS files
    content: bytes | None = None  # set for regular files


@dataclass
class Repo:
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    head: str = ""
    log: list[str] = field(default_factory=list)  # commit summaries, oldest first
    aliases: dict[str, str] = field(default_factory=dict)  # revision -> the commit it resolves to (models)


class FakeHub:
    """The server's state and fault switches. ``url`` is the endpoint to give huggingface_hub."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.models: dict[str, Repo] = {}
        self.model_cards: dict[str, dict[str, Any]] = {}
        self.downloads: list[tuple[str, str, str]] = []  # (repo, revision, path) of every model file GET
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.lfs_puts: list[str] = []  # sha256 of every object PUT, in order
        self.committed: list[str] = []  # every path added by a commit, in order
        # faults
        self.commit_429 = 0  # answer the next N commit POSTs with 429
        self.preupload_429 = 0
        self.retry_after = "0"  # on commit 429s
        self.preupload_retry_after = "0"  # huggingface_hub sleeps this + 1 s for real
        self.foreign_commit_before: set[int] = set()  # our commit numbers (1-based) preceded by another writer's
        self.fail_lfs_after: int | None = None  # PUTs beyond this many answer 507
        self._commit_posts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # repository state ------------------------------------------------------------------------
    def files(self, repo_id: str) -> dict[str, StoredFile]:
        repo = self.repos[repo_id]
        return repo.commits[repo.head]

    def content(self, repo_id: str, path: str) -> bytes:
        stored = self.files(repo_id)[path]
        return stored.content if stored.content is not None else self.lfs[stored.sha256 or ""]

    def _commit(self, repo: Repo, files: dict[str, StoredFile], summary: str) -> str:
        oid = hashlib.sha1(f"{repo.head}\n{summary}\n{sorted((p, f.blob_id) for p, f in files.items())}".encode()).hexdigest()
        repo.commits[oid] = files
        repo.head = oid
        repo.log.append(summary)
        return oid

    def add_model(self, repo_id: str, files: dict[str, bytes], commit: str | None = None, card: dict[str, Any] | None = None) -> str:
        """A public model repository holding ``files`` at ``commit`` (default: a hash of the content); its head.
        ``card`` is the model card's metadata (``model_info().card_data``: the licence tag...)."""
        if card is not None:
            self.model_cards[repo_id] = card
        stored = {}
        for path, data in files.items():
            if _is_lfs(path, len(data)):
                sha = hashlib.sha256(data).hexdigest()
                self.lfs[sha] = data
                stored[path] = StoredFile(len(data), git_blob_id(_pointer(sha, len(data))), sha256=sha)
            else:
                stored[path] = StoredFile(len(data), git_blob_id(data), content=data)
        repo = self.models.setdefault(repo_id, Repo())
        oid = commit or hashlib.sha1(f"{repo_id}\n{sorted((p, f.blob_id) for p, f in stored.items())}".encode()).hexdigest()
        repo.commits[oid] = stored
        repo.head = oid
        return oid

    def resolve_elsewhere(self, repo_id: str, revision: str, commit: str) -> None:
        """Answer requests for ``revision`` with ``commit``'s files and ``X-Repo-Commit: commit``."""
        self.models[repo_id].aliases[revision] = commit

    def model_content(self, repo_id: str, commit: str, path: str) -> bytes:
        stored = self.models[repo_id].commits[commit][path]
        return stored.content if stored.content is not None else self.lfs[stored.sha256 or ""]

    def foreign_commit(self, repo_id: str, path: str = "NOTES.md", text: bytes = b"written by someone else\n") -> str:
        """Another writer commits: the branch moves under the client's feet."""
        repo = self.repos[repo_id]
        files = dict(repo.commits[repo.head])
        files[path] = StoredFile(len(text), git_blob_id(text), content=text)
        return self._commit(repo, files, "a concurrent commit")


def _is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_BYTES


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            return

        # plumbing ---------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has the headers of the GET, never its body
                self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> None:
            extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
            self._send(status, {"error": message}, extra)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Invalid credentials in Authorization header")
            return False

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "Repository not found", "RepoNotFound")
            return repo

        def _snapshot(self, repo: Repo, revision: str) -> dict[str, StoredFile] | None:
            revision = unquote(revision)
            oid = repo.head if revision in ("main", repo.head) else revision
            files = repo.commits.get(oid)
            if files is None:
                self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return files

        def _resolve(self, repo: Repo, revision: str) -> str | None:
            """The commit a model revision names (branch main, a commit, or an alias), or a 404 sent."""
            revision = unquote(revision)
            oid = repo.aliases.get(revision) or (repo.head if revision == "main" else revision)
            if oid not in repo.commits:
                self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                return None
            return oid

        def _model_route(self, method: str, url: Any) -> bool:
            """Model repositories: info, tree, resolve. True when the path was one of theirs (answered)."""
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", url.path):
                hub.requests["model_info"] += 1
                repo = hub.models.get(m.group(1))
                if repo is None:
                    self._error(404, "Repository not found", "RepoNotFound")
                    return True
                oid = self._resolve(repo, m.group(2) or "main")
                if oid is None:
                    return True
                blobs = parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true"
                siblings = []
                for path, stored in sorted(repo.commits[oid].items()):
                    entry: dict[str, Any] = {"rfilename": path}
                    if blobs:
                        entry.update(size=stored.size, blobId=stored.blob_id)
                        if stored.sha256 is not None:
                            entry["lfs"] = {"sha256": stored.sha256, "size": stored.size,
                                            "pointerSize": len(_pointer(stored.sha256, stored.size))}
                    siblings.append(entry)
                info = {"id": m.group(1), "modelId": m.group(1), "sha": oid, "private": False, "siblings": siblings}
                if m.group(1) in hub.model_cards:
                    info["cardData"] = hub.model_cards[m.group(1)]
                self._send(200, info)
                return True
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", url.path):
                hub.requests["model_tree"] += 1
                repo = hub.models.get(m.group(1))
                oid = repo and self._resolve(repo, m.group(2))
                if repo is None:
                    self._error(404, "Repository not found", "RepoNotFound")
                if oid:
                    self._send(200, self._tree(repo.commits[oid], unquote(m.group(3) or ""), parse_qs(url.query)))
                return True
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url.path):
                hub.requests[f"model_{method.lower()}"] += 1
                repo = hub.models.get(m.group(1))
                if repo is None:
                    self._error(404, "Repository not found", "RepoNotFound")
                    return True
                oid = self._resolve(repo, m.group(2))
                if oid is None:
                    return True
                path = unquote(m.group(3))
                stored = repo.commits[oid].get(path)
                if stored is None:
                    self._error(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": oid})
                    return True
                data = hub.model_content(m.group(1), oid, path)
                headers = {"X-Repo-Commit": oid, "ETag": f'"{stored.sha256 or stored.blob_id}"'}
                if stored.sha256 is not None:
                    headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if method == "GET":
                    hub.downloads.append((m.group(1), unquote(m.group(2)), path))
                    self.wfile.write(data)
                return True
            return False

        def do_HEAD(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            with hub.lock:
                if not self._model_route("HEAD", url):
                    self._error(404, f"no route for HEAD {url.path}")

        def do_GET(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            with hub.lock:
                if self._model_route("GET", url):
                    return
                if not self._authorized():
                    return
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", url.path):
                    hub.requests["tree"] += 1
                    repo = self._repo(m.group(1))
                    files = repo and self._snapshot(repo, m.group(2))
                    if files is None:
                        return
                    return self._send(200, self._tree(files, unquote(m.group(3) or ""), parse_qs(url.query)))
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?", url.path):
                    hub.requests["info"] += 1
                    repo = self._repo(m.group(1))
                    files = repo and self._snapshot(repo, m.group(2) or "main")
                    if files is None:
                        return
                    sha = repo.head if (m.group(2) or "main") == "main" else unquote(m.group(2))
                    return self._send(200, {"id": m.group(1), "sha": sha, "private": False,
                                            "siblings": [{"rfilename": p} for p in sorted(files)]})
            self._error(404, f"no route for GET {url.path}")

        def _tree(self, files: dict[str, StoredFile], prefix: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            base = f"{prefix.rstrip('/')}/" if prefix else ""
            entries: dict[str, dict[str, Any]] = {}
            for path, stored in sorted(files.items()):
                if not path.startswith(base):
                    continue
                parts = path[len(base):].split("/")
                for depth in range(1, len(parts)):
                    folder = base + "/".join(parts[:depth])
                    if recursive or depth == 1:
                        entries.setdefault(folder, {"type": "directory", "path": folder, "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0})
                if recursive or len(parts) == 1:
                    entry: dict[str, Any] = {"type": "file", "path": path, "size": stored.size, "oid": stored.blob_id}
                    if stored.sha256 is not None:
                        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(_pointer(stored.sha256, stored.size))}
                    entries[path] = entry
            return list(entries.values())

        def do_POST(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            body = self._body()
            with hub.lock:
                if not self._authorized():
                    return
                if url.path == "/api/repos/create":
                    return self._create(json.loads(body))
                if url.path == "/api/validate-yaml":
                    return self._validate(json.loads(body))
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", url.path):
                    return self._preupload(m.group(1), m.group(2), json.loads(body))
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/([^/]+)", url.path):
                    return self._paths_info(m.group(1), m.group(2), body)
                if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", url.path):
                    return self._commit(m.group(1), m.group(2), body)
                if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", url.path):
                    return self._lfs_batch(m.group(1), json.loads(body))
            self._error(404, f"no route for POST {url.path}")

        def do_PUT(self) -> None:  # noqa: N802
            url = urlparse(self.path)
            body = self._body()
            with hub.lock:
                m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", url.path)
                if not m:
                    return self._error(404, f"no route for PUT {url.path}")
                hub.requests["lfs_put"] += 1
                if hub.fail_lfs_after is not None and len(hub.lfs_puts) >= hub.fail_lfs_after:
                    return self._error(507, "storage unavailable (injected)")
                if hashlib.sha256(body).hexdigest() != m.group(1):
                    return self._error(400, "content does not match its oid")
                hub.lfs[m.group(1)] = body
                hub.lfs_puts.append(m.group(1))
                self._send(200, {})

        # endpoints ---------------------------------------------------------------------------
        def _create(self, payload: dict[str, Any]) -> None:
            hub.requests["create"] += 1
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            url = f"{hub.url}/datasets/{repo_id}"
            if repo_id in hub.repos:
                return self._send(409, {"error": "You already created this dataset repo", "url": url},
                                  {"X-Error-Message": "You already created this dataset repo"})
            repo = Repo()
            hub.repos[repo_id] = repo
            hub._commit(repo, {".gitattributes": StoredFile(len(GITATTRIBUTES), git_blob_id(GITATTRIBUTES), content=GITATTRIBUTES)},
                        "initial commit")
            self._send(200, {"url": url, "name": repo_id})

        def _validate(self, payload: dict[str, Any]) -> None:
            hub.requests["validate"] += 1
            text = payload.get("content", "")
            match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
            try:
                metadata = yaml.safe_load(match.group(1)) if match else None
            except yaml.YAMLError as error:
                return self._send(400, {"errors": [{"message": f"invalid YAML: {error}"}]})
            if not isinstance(metadata, dict):
                return self._send(200, {"warnings": [{"message": "empty or missing metadata"}]})
            self._send(200, {"warnings": []})

        def _preupload(self, repo_id: str, revision: str, payload: dict[str, Any]) -> None:
            hub.requests["preupload"] += 1
            if hub.preupload_429:
                hub.preupload_429 -= 1
                return self._error(429, "rate limited (injected)", headers={"Retry-After": hub.preupload_retry_after})
            repo = self._repo(repo_id)
            files = repo and self._snapshot(repo, revision)
            if files is None:
                return
            out = []
            for item in payload["files"]:
                lfs = _is_lfs(item["path"], item["size"])
                stored = files.get(item["path"])
                oid = None if stored is None else (stored.sha256 if lfs else stored.blob_id)
                out.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            self._send(200, {"files": out})

        def _paths_info(self, repo_id: str, revision: str, body: bytes) -> None:
            hub.requests["paths_info"] += 1
            repo = self._repo(repo_id)
            files = repo and self._snapshot(repo, revision)
            if files is None:
                return
            try:
                paths = json.loads(body).get("paths", [])
            except ValueError:
                paths = parse_qs(body.decode()).get("paths", [])
            listing = self._tree(files, "", {"recursive": ["true"]})
            self._send(200, [e for e in listing if e["path"] in set(paths)])

        def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
            hub.requests["lfs_batch"] += 1
            if self._repo(repo_id) is None:
                return
            objects = []
            for item in payload["objects"]:
                entry: dict[str, Any] = {"oid": item["oid"], "size": item["size"]}
                if item["oid"] not in hub.lfs:  # already stored: no actions, the client skips it
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{item['oid']}"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            hub.requests["commit"] += 1
            if hub.commit_429:
                hub.commit_429 -= 1
                return self._error(429, "You have exceeded our hourly quotas for action: commit (injected)",
                                   headers={"Retry-After": hub.retry_after})
            repo = self._repo(repo_id)
            if repo is None or self._snapshot(repo, revision) is None:
                return
            hub._commit_posts += 1
            if hub._commit_posts in hub.foreign_commit_before:
                hub.foreign_commit(repo_id, path=f"NOTES-{hub._commit_posts}.md")
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            parent = header.get("parentCommit")
            if parent is not None and parent != repo.head:
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[repo.head])
            added = []
            for item in lines:
                value = item["value"]
                if item["key"] == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = StoredFile(len(data), git_blob_id(data), content=data)
                    added.append(value["path"])
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(422, f"LFS object {value['oid']} was never uploaded")
                    pointer = _pointer(value["oid"], value["size"])
                    files[value["path"]] = StoredFile(value["size"], git_blob_id(pointer), sha256=value["oid"])
                    added.append(value["path"])
                elif item["key"] == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
                elif item["key"] == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
            oid = hub._commit(repo, files, header.get("summary", ""))
            hub.committed += added
            self._send(200, {"commitUrl": f"{hub.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None})

    return Handler
