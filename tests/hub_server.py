"""A small Hugging Face hub on 127.0.0.1, speaking the `resolve` protocol that `huggingface_hub`'s
downloads use, for tests of the real download code (no mock of `hf_hub_download`).

What it serves, for one model repository at one commit:

- `HEAD|GET /{repo}/resolve/{revision}/{path}` where revision is the commit or a branch name
  (`main`): a 302 redirect to `/lfs/{sha256}` on a second port (another origin, as the hub
  redirects LFS files to its CDN, so the client does not follow it on HEAD), with the headers
  `huggingface_hub` reads: `X-Repo-Commit`, `X-Linked-Etag` (the sha256, quoted),
  `X-Linked-Size`, `ETag`. An unknown revision or file answers 404 with
  `X-Error-Code: RevisionNotFound` / `EntryNotFound`, as the hub does.
- `GET /lfs/{sha256}`: the bytes, with `Range: bytes=N-` answered by 206 `Content-Range`
  (resumed downloads).

Faults for tests: `cut_once(path)` sends the full `Content-Length` but only half of the body on the
next GET of that file and closes the connection (a dropped download); `damage_in_transfer(path)`
serves one byte changed; `stop()` closes every connection (the network is down). `requests`
records every request as (method, path, Range header or None); `put(path, data)` replaces a file.

    with HubServer(repo="GLIPModel/GLIP", commit=COMMIT, files={"a.pth": b"..."}) as hub:
        env = {"HF_ENDPOINT": hub.endpoint}
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class HubServer:
    """A local hub serving `files` (path in the repository -> bytes) of `repo` at `commit`."""

    def __init__(self, repo: str, commit: str, files: dict[str, bytes], branches: tuple[str, ...] = ("main",)):
        self.repo = repo
        self.commit = commit
        self.branches = set(branches)
        self.files: dict[str, bytes] = {}
        self._blobs: dict[str, bytes] = {}
        self._cut: set[str] = set()
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._connections: set = set()
        self.port: int | None = None
        self.cdn_port: int | None = None
        for path, data in files.items():
            self.put(path, data)

    # -- content -------------------------------------------------------------------------------
    def put(self, path: str, data: bytes) -> None:
        """Serve `data` as `path` of the repository (replacing what was there)."""
        sha = hashlib.sha256(data).hexdigest()
        self.files[path] = data
        self._blobs[sha] = data

    def cut_once(self, path: str) -> None:
        """The next GET of `path`'s bytes stops half way through (connection closed)."""
        self._cut.add(hashlib.sha256(self.files[path]).hexdigest())

    def damage_in_transfer(self, path: str) -> None:
        """Serve `path` with one byte changed while still announcing the sha256 of the true bytes."""
        sha = self.sha256(path)
        data = bytearray(self._blobs[sha])
        data[len(data) // 2] ^= 0xFF
        self._blobs[sha] = bytes(data)

    def sha256(self, path: str) -> str:
        return hashlib.sha256(self.files[path]).hexdigest()

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self.cdn_port}"

    def start(self) -> HubServer:
        """Listen on 127.0.0.1 (the same ports again after a `stop`, so clients' URLs stay valid)."""
        handler = type("Handler", (_Handler,), {"hub": self})
        ports = []
        for port in (self.port, self.cdn_port):
            server = ThreadingHTTPServer(("127.0.0.1", port or 0), handler)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
            ports.append(server.server_address[1])
        self.port, self.cdn_port = ports
        return self

    def stop(self) -> None:
        """Stop listening: clients get 'connection refused' (the network is down)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        with self._lock:  # kept-alive connections too: nothing answers any more
            for sock in self._connections:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._connections.clear()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    def take_cut(self, sha: str) -> bool:
        with self._lock:
            if sha in self._cut:
                self._cut.discard(sha)
                return True
            return False


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")
_LFS = re.compile(r"^/lfs/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.record(self.command, path, self.headers.get("Range"))
        if (m := _RESOLVE.match(path)) is not None:
            self._resolve(m["repo"], m["revision"], m["path"])
        elif (m := _LFS.match(path)) is not None:
            self._blob(m["sha"], body)
        else:
            self._empty(404, {"X-Error-Code": "RepoNotFound"})

    def _resolve(self, repo: str, revision: str, path: str) -> None:
        hub = self.hub
        if repo != hub.repo:
            return self._empty(404, {"X-Error-Code": "RepoNotFound"})
        if revision != hub.commit and revision not in hub.branches:
            return self._empty(404, {"X-Error-Code": "RevisionNotFound"})
        if path not in hub.files:
            return self._empty(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": hub.commit})
        sha = hub.sha256(path)
        size = len(hub.files[path])
        self._empty(302, {
            "Location": f"{hub.cdn}/lfs/{sha}",
            "X-Repo-Commit": hub.commit,
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(size),
            "ETag": f'"{hashlib.sha1(hub.files[path]).hexdigest()}"',
        })

    def _blob(self, sha: str, body: bool) -> None:
        data = self.hub._blobs.get(sha)
        if data is None:
            return self._empty(404, {})
        start = 0
        if (rng := self.headers.get("Range")) is not None and (m := _RANGE.match(rng.strip())) is not None:
            start = int(m["start"])
            if start >= len(data):
                return self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
        part = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(part)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{sha}"')
        self.end_headers()
        if not body:
            return
        if self.hub.take_cut(sha):
            self.wfile.write(part[: len(part) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(part)

    def _empty(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()
