"""A stand-in for the Hugging Face hub on loopback: serves folders as dataset repositories through the endpoints
huggingface_hub's HfFileSystem calls (repository info, tree listing, paths-info, file download with byte ranges).

The hub cannot be reached from the test machines; this is the part of it a hub dataset's files are read through,
so rayft's own code (and huggingface_hub's client) run unchanged with HF_ENDPOINT pointed here.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

REVISION = "0123456789abcdef0123456789abcdef01234567"  # every repository's one commit


class HubServer:
    """Repositories are the folders under ``root`` two deep (owner/name); ``requests`` counts the file downloads
    (path, range) made, to show what a reader fetched."""

    def __init__(self, root: Path):
        self.root = root
        self.downloads: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                server._serve(self, body=False)

            def do_GET(self) -> None:
                server._serve(self, body=True)

            def do_POST(self) -> None:
                server._serve(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _repo(self, repo: str) -> Path | None:
        path = self.root / repo
        return path if repo.count("/") == 1 and path.is_dir() else None

    def _entry(self, repo_dir: Path, path: Path) -> dict:
        rel = path.relative_to(repo_dir).as_posix()
        if path.is_dir():
            return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "size": 0, "path": rel}
        return {
            "type": "file",
            "oid": hashlib.sha1(path.read_bytes()).hexdigest(),
            "size": path.stat().st_size,
            "path": rel,
        }

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
            repo_dir = self._repo(m[1])
            if repo_dir is None:
                return self._json(h, {"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"}, body)
            files = [p for p in sorted(repo_dir.rglob("*")) if p.is_file()]
            info = {
                "id": m[1],
                "sha": REVISION,
                "private": False,
                "siblings": [{"rfilename": p.relative_to(repo_dir).as_posix()} for p in files],
            }
            return self._json(h, info, 200, {}, body)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/[^/]+/?(.*)", path):
            repo_dir = self._repo(m[1])
            base = repo_dir / m[2] if repo_dir else None
            if base is None or not base.exists():
                return self._json(h, {"error": "not found"}, 404, {"X-Error-Code": "EntryNotFound"}, body)
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
            children = sorted(base.rglob("*") if recursive else base.iterdir())
            return self._json(h, [self._entry(repo_dir, p) for p in children], 200, {}, body)
        if m := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/paths-info/[^/]+", path):
            repo_dir = self._repo(m[1])
            length = int(h.headers.get("Content-Length") or 0)
            form = h.rfile.read(length).decode()
            given = json.loads(form)["paths"] if form.startswith("{") else parse_qs(form).get("paths", [])
            found = [self._entry(repo_dir, repo_dir / p) for p in given if repo_dir and (repo_dir / p).exists()]
            return self._json(h, found, 200, {}, body)
        if m := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
            repo_dir = self._repo(m[1])
            file = repo_dir / m[2] if repo_dir else None
            if file is None or not file.is_file():
                return self._json(h, {"error": "not found"}, 404, {"X-Error-Code": "EntryNotFound"}, body)
            data = file.read_bytes()
            rng = h.headers.get("Range")
            self.downloads.append((m[2], rng))
            status, headers = 200, {"X-Repo-Commit": REVISION, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            if rng and (r := re.fullmatch(r"bytes=(\d+)-(\d*)", rng)):
                start, end = int(r[1]), int(r[2]) if r[2] else len(data) - 1
                headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
                data, status = data[start : end + 1], 206
            return self._send(h, data, status, {**headers, "Content-Type": "application/octet-stream"}, body)
        return self._json(h, {"error": f"not served here: {path}"}, 404, {}, body)

    def _json(self, h: BaseHTTPRequestHandler, value: object, status: int, headers: dict, body: bool) -> None:
        self._send(h, json.dumps(value).encode(), status, {**headers, "Content-Type": "application/json"}, body)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, data: bytes, status: int, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)
