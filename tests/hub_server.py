"""The smallest Hub-compatible HTTP server the unmodified ``huggingface_hub`` client needs, in memory.

No PyPI package serves uploads, so the tests run this one: standard-library
``ThreadingHTTPServer`` on 127.0.0.1, one throwaway token, repos as lists of commits, LFS objects
by sha256. It implements exactly the routes the client calls for create/delete repo, upload_folder
(preupload, LFS batch + PUT, NDJSON commit), repo info, tree listing and file resolution.

Behaviour copied from the real Hub because the client depends on it:
- an existing repo answers ``create`` with 409 *and* its ``url``, or ``exist_ok=True`` fails;
- a commit is applied all or nothing (a missing LFS object rejects the whole commit);
- private repos answer reads without the token with 404 ``RepoNotFound``;
- 404s carry ``X-Error-Code`` so the client raises the specific error;
- never 408/429/5xx: the client would retry for seconds.

Failures can be injected (``fail_next``) to prove that an interrupted upload leaves no commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}
_URL_PREFIX = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}
_PREFIX_TYPE = {"": "models", "datasets/": "datasets", "spaces/": "spaces"}
# What the real Hub stores in LFS: weights and anything large.
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")
_LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    content: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What the client compares: git blob sha1 for regular files, sha256 for LFS files."""
        return hashlib.sha256(self.content).hexdigest() if self.lfs else git_blob_sha(self.content)


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    kind: str  # models | datasets | spaces
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in ("main", "refs/heads/main"):
            return self.head
        return next((c for c in self.commits if c.sha == revision), None)


class HubState:
    """Everything the server knows; tests read it to check what was (not) committed."""

    def __init__(self, token: str, user: str = "tester") -> None:
        self.token = token
        self.user = user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.RLock()
        self._failures: dict[str, int] = {}
        self.unknown_routes: list[str] = []
        self.server_errors: list[str] = []

    def fail_next(self, what: str, times: int = 1) -> None:
        """Make the next ``times`` requests of kind ``lfs_put`` or ``commit`` fail with 403."""
        self._failures[what] = times

    def _should_fail(self, what: str) -> bool:
        with self.lock:
            left = self._failures.get(what, 0)
            if left:
                self._failures[what] = left - 1
            return bool(left)

    def repo(self, kind: str, repo_id: str) -> Repo | None:
        return self.repos.get((kind, repo_id))

    def new_commit(self, repo: Repo, message: str, files: dict[str, StoredFile]) -> Commit:
        commit = Commit(sha=hashlib.sha1(uuid.uuid4().bytes).hexdigest(), message=message, files=files)
        repo.commits.append(commit)
        return commit


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass

    # ---- plumbing -------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json_body(self) -> dict:
        body = self._body()
        return json.loads(body) if body else {}

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization", "") == f"Bearer {self.state.token}"

    def _require_auth(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_repo(self, kind: str, repo_id: str) -> Repo:
        repo = self.state.repo(kind, repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _writable_repo(self, kind: str, repo_id: str) -> Repo:
        self._require_auth()
        return self._readable_repo(kind, repo_id)

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(revision)
        if commit is None:
            raise HubError(404, f"Revision not found: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        path = url.path
        for method, pattern, handler in ROUTES:
            if method != self.command and not (method == "GET" and self.command == "HEAD"):
                continue
            match = re.fullmatch(pattern, path)
            if match:
                try:
                    with self.state.lock if self.command != "PUT" else _NoLock():
                        handler(self, **{k: v for k, v in match.groupdict().items() if v is not None})
                except HubError as err:
                    headers = {"X-Error-Message": err.message}
                    if err.code:
                        headers["X-Error-Code"] = err.code
                    self._json(err.status, {"error": err.message, **err.extra}, headers)
                except Exception as err:  # noqa: BLE001 - a server bug must fail the test, not make the client retry
                    self.state.server_errors.append(f"{self.command} {path}: {err!r}")
                    self._json(400, {"error": f"test hub server error: {err!r}"})
                return
        self.state.unknown_routes.append(f"{self.command} {path}")
        self._json(404, {"error": f"no route {self.command} {path}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routes ---------------------------------------------------------------------------------
    def whoami(self) -> None:
        self._require_auth()
        self._json(200, {"type": "user", "name": self.state.user, "orgs": [], "auth": {"type": "access_token"}})

    def validate_yaml(self) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def create_repo(self) -> None:
        self._require_auth()
        body = self._json_body()
        kind = TYPES[body.get("type") or "model"]
        repo_id = f"{body.get('organization') or self.state.user}/{body['name']}"
        url = f"{self.base_url}/{_URL_PREFIX[kind]}{repo_id}"
        if self.state.repo(kind, repo_id) is not None:
            raise HubError(409, "You already created this repo", extra={"url": url})
        private = bool(body.get("private")) or body.get("visibility") == "private"
        repo = Repo(kind, repo_id, private)
        initial = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
        self.state.new_commit(repo, "initial commit", {".gitattributes": StoredFile(initial, lfs=False)})
        self.state.repos[(kind, repo_id)] = repo
        self._json(200, {"url": url, "name": repo_id})

    def delete_repo(self) -> None:
        self._require_auth()
        body = self._json_body()
        kind = TYPES[body.get("type") or "model"]
        repo_id = f"{body.get('organization') or self.state.user}/{body['name']}"
        if self.state.repos.pop((kind, repo_id), None) is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        self._json(200, {})

    def repo_info(self, kind: str, repo_id: str, revision: str = "main") -> None:
        repo = self._readable_repo(kind, repo_id)
        commit = self._commit_at(repo, revision)
        siblings = [
            {"rfilename": path, "size": len(f.content), **({"lfs": self._sibling_lfs(f)} if f.lfs else {})}
            for path, f in sorted(commit.files.items())
        ]
        self._json(
            200,
            {
                "id": repo_id,
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": siblings,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z",
            },
        )

    @staticmethod
    def _sibling_lfs(f: StoredFile) -> dict:
        return {"sha256": hashlib.sha256(f.content).hexdigest(), "size": len(f.content), "pointerSize": 134}

    @staticmethod
    def _lfs_info(f: StoredFile) -> dict:
        return {"oid": hashlib.sha256(f.content).hexdigest(), "size": len(f.content), "pointerSize": 134}

    def preupload(self, kind: str, repo_id: str, revision: str) -> None:
        repo = self._writable_repo(kind, repo_id)
        current = self._commit_at(repo, revision).files
        files = []
        for item in self._json_body().get("files", []):
            path, size = item["path"], int(item["size"])
            lfs = path.endswith(_LFS_SUFFIXES) or size >= _LFS_MIN_SIZE
            existing = current.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing is not None else None,
                }
            )
        self._json(200, {"files": files})

    def lfs_batch(self, repo_id: str, prefix: str = "") -> None:
        self._writable_repo(_PREFIX_TYPE[prefix or ""], repo_id)
        objects = []
        for obj in self._json_body().get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.state.lfs:  # already stored: no action, the client skips the upload
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def lfs_put(self, oid: str) -> None:
        body = self._body()
        if self.state._should_fail("lfs_put"):
            raise HubError(403, "injected failure: LFS upload refused")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "LFS object does not match its oid")
        with self.state.lock:
            self.state.lfs[oid] = body
        self._send(200)

    def commit(self, kind: str, repo_id: str, revision: str) -> None:
        repo = self._writable_repo(kind, repo_id)
        body = self._body()
        if self.state._should_fail("commit"):
            raise HubError(403, "injected failure: commit refused")
        parent = self._commit_at(repo, revision)
        files = dict(parent.files)
        message = ""
        # Build the whole new tree first: any bad line rejects the commit and the repo is untouched.
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                if value.get("parentCommit") and value["parentCommit"] != parent.sha:
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                content = self.state.lfs.get(value["oid"])
                if content is None:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = StoredFile(content, lfs=True)
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"cannot delete {value['path']}: no such file", "EntryNotFound")
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
            else:
                raise HubError(400, f"unsupported commit operation {key}")
        commit = self.state.new_commit(repo, message, files)
        url = f"{self.base_url}/{_URL_PREFIX[kind]}{repo_id}/commit/{commit.sha}"
        self._json(200, {"success": True, "commitOid": commit.sha, "commitUrl": url})

    def _entries(self, commit: Commit, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        entries, folders = [], set()
        for path, f in sorted(commit.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1 :] if prefix else path
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if folder not in folders:
                    folders.add(folder)
                    entries.append(
                        {"type": "directory", "oid": git_blob_sha(folder.encode()), "size": 0, "path": folder}
                    )
            if len(parts) == 1 or recursive:
                entry = {"type": "file", "oid": git_blob_sha(f.content), "size": len(f.content), "path": path}
                if f.lfs:
                    entry["lfs"] = self._lfs_info(f)
                entries.append(entry)
        return entries

    def tree(self, kind: str, repo_id: str, revision: str, path: str = "") -> None:
        repo = self._readable_repo(kind, repo_id)
        commit = self._commit_at(repo, revision)
        if path and not any(p.startswith(path.strip("/") + "/") for p in commit.files):
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(200, self._entries(commit, unquote(path), recursive))

    def paths_info(self, kind: str, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(kind, repo_id)
        commit = self._commit_at(repo, revision)
        raw = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(raw).get("paths", [])
        else:
            paths = parse_qs(raw.decode()).get("paths", [])
        entries = [e for e in self._entries(commit, "", recursive=True) if e["path"] in set(paths)]
        self._json(200, entries)

    def resolve(self, repo_id: str, revision: str, path: str, prefix: str = "") -> None:
        repo = self._readable_repo(_PREFIX_TYPE[prefix or ""], repo_id)
        commit = self._commit_at(repo, revision)
        stored = commit.files.get(unquote(path))
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {})
        content = stored.content
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(content)}"', "Accept-Ranges": "bytes"}
        if stored.lfs:
            headers["X-Linked-Etag"] = f'"{hashlib.sha256(content).hexdigest()}"'
            headers["X-Linked-Size"] = str(len(content))
        status = 200
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if byte_range and self.command == "GET":
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers, content_type="application/octet-stream")


class _NoLock:
    """LFS PUTs stream large bodies; they touch the store under its lock only at the end."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_REPO = r"(?P<repo_id>[\w.-]+/[\w.-]+)"
_KIND = r"(?P<kind>models|datasets|spaces)"
_PFX = r"(?P<prefix>datasets/|spaces/)?"
ROUTES = [
    ("GET", r"/api/whoami-v2", HubHandler.whoami),
    ("POST", r"/api/validate-yaml", HubHandler.validate_yaml),
    ("POST", r"/api/repos/create", HubHandler.create_repo),
    ("DELETE", r"/api/repos/delete", HubHandler.delete_repo),
    ("POST", rf"/api/{_KIND}/{_REPO}/preupload/(?P<revision>[^/]+)", HubHandler.preupload),
    ("POST", rf"/api/{_KIND}/{_REPO}/commit/(?P<revision>[^/]+)", HubHandler.commit),
    ("POST", rf"/api/{_KIND}/{_REPO}/paths-info/(?P<revision>[^/]+)", HubHandler.paths_info),
    ("GET", rf"/api/{_KIND}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?", HubHandler.tree),
    ("GET", rf"/api/{_KIND}/{_REPO}(?:/revision/(?P<revision>[^/]+))?", HubHandler.repo_info),
    ("POST", rf"/{_PFX}{_REPO}\.git/info/lfs/objects/batch", HubHandler.lfs_batch),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", HubHandler.lfs_put),
    ("GET", rf"/{_PFX}{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", HubHandler.resolve),
]


class HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), HubHandler)
        self.state = HubState(token)
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> Repo:
        """Create ``repo_id`` holding ``files`` in one commit, server-side (test setup without a client)."""
        repo = Repo("models", repo_id, private)
        stored = {path: StoredFile(content, lfs=path.endswith(_LFS_SUFFIXES)) for path, content in files.items()}
        with self.state.lock:
            for f in stored.values():
                if f.lfs:
                    self.state.lfs[hashlib.sha256(f.content).hexdigest()] = f.content
            self.state.new_commit(repo, "seeded by the test", stored)
            self.state.repos[("models", repo_id)] = repo
        return repo

    def commits(self, repo_id: str, kind: str = "models") -> list[Commit]:
        repo = self.state.repo(kind, repo_id)
        return [] if repo is None else list(repo.commits)

    def files(self, repo_id: str, kind: str = "models") -> dict[str, bytes]:
        """The files at the head of ``repo_id`` (what a fresh clone would hold)."""
        repo = self.state.repo(kind, repo_id)
        return {} if repo is None else {p: f.content for p, f in repo.head.files.items()}
