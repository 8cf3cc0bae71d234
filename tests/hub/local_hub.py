"""A small Hugging Face Hub on 127.0.0.1, for tests that push and pull through the real `huggingface_hub` client.

It speaks the part of the Hub's HTTP API that `huggingface_hub`, `transformers` and `datasets` use to publish and
load repos, with git-like storage on disk: file contents live in `<root>/objects/<sha256>`, and each repo is one JSON
file holding its branches and commits. A commit's id is the sha1 of its parent and its sorted tree of git blob ids
(an LFS file's blob is its pointer file, as in git-lfs), so ids are real content hashes.

Endpoints (`{type}` is models or datasets; `{prefix}` is empty for models, `datasets/` for datasets):

    POST /api/repos/create                             create a repo (409 if it exists); first commit: .gitattributes
    POST /api/validate-yaml                            the model card's front matter must parse as YAML
    GET  /api/{type}/{repo}[/revision/{rev}]           repo info: sha, siblings, card data, library_name, pipeline_tag
    GET  /api/{type}/{repo}/tree/{rev}[/{path}]        list a folder (?recursive=true for everything below it)
    POST /api/{type}/{repo}/preupload/{rev}            upload mode per file: "lfs" (.gitattributes, > 10 MB) or
                                                       "regular", and the current oid to skip unchanged files
    POST /api/{type}/{repo}/commit/{rev}               ndjson commit of added files: file (base64) or lfsFile;
                                                       a stale parentCommit gets 412
    POST /{prefix}{repo}.git/info/lfs/objects/batch    LFS batch API (basic transfer): where to PUT missing objects
    PUT  /lfs-objects/{sha256}                         an object announced by a batch call; checked against its oid
    HEAD|GET /{prefix}{repo}/resolve/{rev}/{path}      the file, with ETag, X-Repo-Commit and, for LFS files,
                                                       X-Linked-Etag / X-Linked-Size

Xet is never offered: no Xet headers on downloads and no xet-token endpoint. The client picks Xet for uploads only by
whether `hf_xet` is installed, so clients of this server run with HF_HUB_DISABLE_XET=1.

Authorization is `Bearer <token>` with the tokens given to `LocalHub`; the namespace of a repo is its owner. As on
the Hub, an unknown token gets 401 "Invalid credentials in Authorization header"; a private or missing repo gets 401
without a token and 404 with one (X-Error-Code RepoNotFound either way, so nobody learns that it exists); a missing
revision or file gets 404 with RevisionNotFound / EntryNotFound; writing to someone else's namespace gets 403.
"""

import base64
import fnmatch
import hashlib
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.pkl", "*.parquet", "*.arrow", "*.png", "*.jpg", "*.zip"]
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
PREFIXES = {"model": "", "dataset": "datasets/"}
REPO = r"(?P<repo>[^/]+/[^/]+)"
API = rf"^/api/(?P<repo_type>model|dataset)s/{REPO}"
RAW = rf"^/(?:(?P<repo_type>dataset)s/)?{REPO}"


class HubError(Exception):
    """An error response: status, message (X-Error-Message and JSON body) and the Hub's X-Error-Code if any."""

    def __init__(self, status: int, message: str, code: str | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, {"error": message, **body}

    def headers(self) -> dict:
        headers = {"Content-Type": "application/json", "X-Error-Message": self.message}
        return {**headers, "X-Error-Code": self.code} if self.code else headers


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LocalHub:
    """`with LocalHub(root, {token: user}) as hub:` serves on `hub.url` until the block ends."""

    def __init__(self, root: Path, tokens: dict[str, str]):
        self.root, self.tokens = Path(root), tokens
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self.pending_uploads: dict[str, int] = {}  # LFS objects a batch call asked the client to PUT
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for tests to inspect
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.server.shutdown()
        self.server.server_close()

    # storage

    def repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / f"{repo_id}.json"

    def load(self, repo_type: str, repo_id: str) -> dict | None:
        path = self.repo_file(repo_type, repo_id)
        return json.loads(path.read_text()) if path.exists() else None

    def save(self, repo_type: str, repo_id: str, repo: dict):
        path = self.repo_file(repo_type, repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repo, indent=1))

    def store(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        (self.root / "objects" / sha256).write_bytes(content)
        return sha256

    def read(self, sha256: str) -> bytes:
        return (self.root / "objects" / sha256).read_bytes()

    def commit(self, repo: dict, branch: str, tree: dict, message: str) -> str:
        parent = repo["branches"].get(branch)
        blobs = sorted((path, entry["blob_id"]) for path, entry in tree.items())
        sha = hashlib.sha1(json.dumps({"parent": parent, "tree": blobs}).encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "title": message, "date": now(), "tree": tree}
        repo["branches"][branch] = sha
        return sha

    def tree_entry(self, content: bytes, lfs: bool) -> dict:
        sha256 = self.store(content)
        blob = lfs_pointer(sha256, len(content)) if lfs else content
        return {"sha256": sha256, "size": len(content), "lfs": lfs, "blob_id": git_blob_id(blob)}

    # access

    def user(self, headers) -> str | None:
        authorization = headers.get("Authorization")
        if authorization is None:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def readable(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        repo = self.load(repo_type, repo_id)
        if repo is None or (repo["private"] and user != repo["owner"]):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def writable(self, repo_type: str, repo_id: str, user: str | None) -> dict:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo (pass a token)")
        repo = self.readable(repo_type, repo_id, user)
        if repo["owner"] != user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    @staticmethod
    def resolve(repo: dict, revision: str) -> str:
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # endpoints

    def create_repo(self, request, user):
        body = json.loads(request.body)
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo (pass a token)")
        namespace = body.get("organization") or user
        if namespace != user:
            raise HubError(403, f"You don't have the rights to create a repo under {namespace!r}")
        repo_type, repo_id = body.get("type") or "model", f"{namespace}/{body['name']}"
        with self.lock:
            if self.load(repo_type, repo_id) is not None:
                url = f"{self.url}/{PREFIXES[repo_type]}{repo_id}"
                raise HubError(409, "You already created this repo", url=url)  # the client reads the url
            repo = {"owner": user, "private": body.get("visibility") == "private", "branches": {}, "commits": {}}
            self.commit(repo, "main", {".gitattributes": self.tree_entry(GITATTRIBUTES, False)}, "initial commit")
            self.save(repo_type, repo_id, repo)
        return {"url": f"{self.url}/{PREFIXES[repo_type]}{repo_id}", "name": repo_id}

    def validate_yaml(self, request, user):
        front_matter = re.match(r"^---\n(.*?)\n---", json.loads(request.body)["content"], re.DOTALL)
        try:
            yaml.safe_load(front_matter.group(1) if front_matter else "")
        except yaml.YAMLError as error:
            raise HubError(400, f"Invalid metadata in README.md: {error}") from error
        return {}

    def repo_info(self, request, user, repo_type, repo, rev="main"):
        record = self.readable(repo_type, repo, user)
        sha = self.resolve(record, rev)
        tree = record["commits"][sha]["tree"]
        card = card_data(self.read(tree["README.md"]["sha256"]) if "README.md" in tree else b"")
        return {
            "id": repo,
            "author": record["owner"],
            "sha": sha,
            "private": record["private"],
            "lastModified": record["commits"][sha]["date"],
            "tags": card.get("tags") or [],
            "library_name": card.get("library_name"),
            "pipeline_tag": card.get("pipeline_tag"),
            "cardData": card,
            "siblings": [self.file_info(path, tree[path])["siblings"] for path in sorted(tree)],
        }

    def tree(self, request, user, repo_type, repo, rev, path=""):
        record = self.readable(repo_type, repo, user)
        tree = record["commits"][self.resolve(record, rev)]["tree"]
        path = path.strip("/")
        below = sorted(p for p in tree if not path or p.startswith(path + "/"))
        if path and not below:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        recursive = request.query.get("recursive", ["false"])[0].lower() == "true"
        entries = {}
        for file in below:
            rest = file[len(path) + 1 :] if path else file
            parts = rest.split("/")
            depth = len(parts) if recursive else 1
            for level in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                folder = "/".join(filter(None, [path, *parts[:level]]))
                entries.setdefault(folder, self.folder_info(folder, tree))
            if recursive or len(parts) == 1:
                entries[file] = self.file_info(file, tree[file])["tree"]
        return list(entries.values())

    def preupload(self, request, user, repo_type, repo, rev):
        record = self.writable(repo_type, repo, user)
        tree = record["commits"][self.resolve(record, rev)]["tree"]
        patterns = [line.split()[0] for line in self.read(tree[".gitattributes"]["sha256"]).decode().splitlines()]
        files = []
        for file in json.loads(request.body)["files"]:
            path, existing = file["path"], tree.get(file["path"])
            lfs = file["size"] > LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(Path(path).name, p) for p in patterns)
            oid = None if existing is None else existing["sha256"] if existing["lfs"] else existing["blob_id"]
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return {"files": files}

    def lfs_batch(self, request, user, repo_type, repo):
        self.writable(repo_type, repo, user)
        objects = []
        for obj in json.loads(request.body)["objects"]:
            if (self.root / "objects" / obj["oid"]).exists():
                objects.append({"oid": obj["oid"], "size": obj["size"]})  # no actions: already stored
                continue
            with self.lock:
                self.pending_uploads[obj["oid"]] = obj["size"]
            upload = {"href": f"{self.url}/lfs-objects/{obj['oid']}"}
            objects.append({"oid": obj["oid"], "size": obj["size"], "actions": {"upload": upload}})
        return {"transfer": "basic", "objects": objects}

    def lfs_upload(self, request, user, oid):
        with self.lock:
            size = self.pending_uploads.pop(oid, None)
        if size is None:
            raise HubError(403, "No LFS batch call announced this object")
        content = request.body
        if len(content) != size or hashlib.sha256(content).hexdigest() != oid:
            raise HubError(400, "The uploaded content does not match its oid and size")
        self.store(content)
        return {}

    def create_commit(self, request, user, repo_type, repo, rev):
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with self.lock:
            record = self.writable(repo_type, repo, user)
            if rev not in record["branches"]:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            head = record["branches"][rev]
            if header.get("parentCommit") not in (None, head):
                raise HubError(412, f"A commit has happened since {header['parentCommit']}: {rev} is at {head}")
            tree = dict(record["commits"][head]["tree"])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    tree[value["path"]] = self.tree_entry(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    if not (self.root / "objects" / value["oid"]).exists():
                        raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    tree[value["path"]] = self.tree_entry(self.read(value["oid"]), lfs=True)
                elif key != "header":
                    raise HubError(400, f"Unsupported commit operation {key!r}")
            sha = self.commit(record, rev, tree, header["summary"])
            self.save(repo_type, repo, record)
        url = f"{self.url}/{PREFIXES[repo_type]}{repo}/commit/{sha}"
        return {"commitUrl": url, "commitOid": sha, "success": True, "pullRequestUrl": None}

    def resolve_file(self, request, user, repo_type, repo, rev, path):
        record = self.readable(repo_type, repo, user)
        sha = self.resolve(record, rev)
        entry = record["commits"][sha]["tree"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
        etag = entry["sha256"] if entry["lfs"] else entry["blob_id"]
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": sha}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        return headers, self.read(entry["sha256"])

    def file_info(self, path: str, entry: dict) -> dict:
        lfs = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(lfs_pointer(entry["sha256"], 0))}
        tree = {"type": "file", "oid": entry["blob_id"], "size": entry["size"], "path": path}
        sibling = {"rfilename": path, "size": entry["size"], "blobId": entry["blob_id"]}
        if entry["lfs"]:
            tree["lfs"] = lfs
            sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"], "pointerSize": lfs["pointerSize"]}
        return {"tree": tree, "siblings": sibling}

    @staticmethod
    def folder_info(path: str, tree: dict) -> dict:
        below = sorted((p, e["blob_id"]) for p, e in tree.items() if p.startswith(path + "/"))
        tree_id = hashlib.sha1(json.dumps(below).encode()).hexdigest()
        return {"type": "directory", "oid": tree_id, "size": 0, "path": path}

    def routes(self):
        return [
            ("POST", r"^/api/repos/create$", self.create_repo),
            ("POST", r"^/api/validate-yaml$", self.validate_yaml),
            ("GET", rf"{API}(?:/revision/(?P<rev>[^/]+))?$", self.repo_info),
            ("GET", rf"{API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", self.tree),
            ("POST", rf"{API}/preupload/(?P<rev>[^/]+)$", self.preupload),
            ("POST", rf"{API}/commit/(?P<rev>[^/]+)$", self.create_commit),
            ("POST", rf"{RAW}\.git/info/lfs/objects/batch$", self.lfs_batch),
            ("PUT", r"^/lfs-objects/(?P<oid>[0-9a-f]{64})$", self.lfs_upload),
            ("GET", rf"{RAW}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", self.resolve_file),
        ]


def card_data(readme: bytes) -> dict:
    front_matter = re.match(r"^---\n(.*?)\n---", readme.decode(), re.DOTALL)
    return (yaml.safe_load(front_matter.group(1)) or {}) if front_matter else {}


def make_handler(hub: LocalHub):
    routes = [(method, re.compile(pattern), endpoint) for method, pattern, endpoint in hub.routes()]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def log_message(self, *args):  # quiet: tests read `hub.requests` instead
            pass

        def handle_one(self):
            url = urlsplit(self.path)
            # read the body whatever happens next: what is left unread would garble the next request on this
            # kept-alive connection
            self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.query = parse_qs(url.query)
            method = "GET" if self.command == "HEAD" else self.command
            try:
                for route_method, pattern, endpoint in routes:
                    match = pattern.match(url.path) if route_method == method else None
                    if match:
                        arguments = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        if "repo" in arguments:
                            arguments.setdefault("repo_type", "model")
                        result = endpoint(self, hub.user(self.headers), **arguments)
                        break
                else:
                    raise HubError(404, f"The local hub has no route for {self.command} {url.path}")
            except HubError as error:
                return self.send(error.status, json.dumps(error.body).encode(), error.headers())
            except Exception as error:  # a bug in this server: the client's error message shows it
                return self.send(500, b"", HubError(500, f"local hub: {error!r}").headers())
            headers, content = result if isinstance(result, tuple) else ({}, json.dumps(result).encode())
            self.send(200, content, {"Content-Type": "application/json", **headers})

        def send(self, status: int, content: bytes, headers: dict):
            hub.requests.append((self.command, urlsplit(self.path).path, status))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        do_GET = do_HEAD = do_POST = do_PUT = handle_one

    return Handler
