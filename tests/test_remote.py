"""Remote --data-files (corpus/remote.py), offline: a local HTTP server and a fake Hugging Face hub on 127.0.0.1.

`FakeHub` is meant for reuse: `with FakeHub(AMAZON_2023) as hub:` then run step 1 with HF_ENDPOINT=hub.endpoint."""
import contextlib
import gzip
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from common import PipelineError, UsageError
from corpus.remote import describe_remote, expand_remote, open_remote

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMAZON = "McAuley-Lab/Amazon-Reviews-2023"
AMAZON_2023 = {AMAZON: {
    "raw/review_categories/All_Beauty.jsonl": b'{"rating": 5.0, "title": "Such a lovely scent", "text": "Great"}\n'
                                              b'{"rating": 4.0, "title": "Works well", "text": "Good value"}\n',
    "raw/review_categories/Appliances.jsonl": b'{"rating": 1.0, "title": "Broke in a week", "text": "No"}\n',
    "raw/meta_categories/meta_All_Beauty.jsonl": b'{"main_category": "All Beauty", "title": "Howard LC0008"}\n',
    "README.md": b"# Amazon Reviews 2023 (a few lines of it)\n",
}}
REVIEWS_GLOB = f"hf://datasets/{AMAZON}/raw/review_categories/*.jsonl"
JSONL = b"".join(b'{"title": "product %d", "text": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(20_000))


@contextlib.contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run an HTTP server on a free port of 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as real servers answer; no request log on stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, body: bytes = b"", headers: dict | None = None, cut_at: int | None = None) -> None:
        """Answer with `body`; with `cut_at`, announce all of it but close the connection after that many bytes."""
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        self.wfile.write(body if cut_at is None else body[:cut_at])
        if cut_at is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


class FileHandler(QuietHandler):
    """Serves FILES; /cut/NAME announces the whole of NAME and closes the connection half-way; /encoded/NAME sends a
    .gz with Content-Encoding: gzip (as some servers do) and gzips anything else for clients that accept it."""

    FILES = {"/reviews.jsonl": JSONL, "/reviews.jsonl.gz": gzip.compress(JSONL, mtime=0),
             "/bad.jsonl": JSONL + b'{"title": "cut\n'}

    def do_GET(self) -> None:
        name = re.sub(r"^/(cut|encoded)/", "/", self.path.split("?", 1)[0])
        if name not in self.FILES:
            return self.send(404, b"not found")
        body, headers = self.FILES[name], {"Content-Type": "application/octet-stream"}
        if self.path.startswith("/encoded/") and (name.endswith(".gz") or "gzip" in self.headers["Accept-Encoding"]):
            body, headers["Content-Encoding"] = (body if name.endswith(".gz") else gzip.compress(body)), "gzip"
        self.send(200, body, headers, cut_at=len(body) // 2 if self.path.startswith("/cut/") else None)

    do_HEAD = do_GET


class FakeHub:
    """The few Hugging Face hub routes HfFileSystem and HfApi use to resolve a revision, list and stream dataset
    files: GET /api/datasets/{repo}[/revision/{rev}], GET /api/datasets/{repo}/tree/{rev}[/{path}],
    POST /api/datasets/{repo}/paths-info/{rev}, GET|HEAD /datasets/{repo}/resolve/{rev}/{path} (with Range).
    Each repo's "main" branch points at its latest `commit`; paths in `cut` are sent half and the connection closed."""

    def __init__(self, repos: dict[str, dict[str, bytes]]) -> None:
        self.commits: dict[str, tuple[str, dict[str, bytes]]] = {}  # sha -> (repo, {path: bytes})
        self.main: dict[str, str] = {}  # repo -> sha
        self.cut: set[str] = set()
        self.requests: list[str] = []  # "METHOD /path", as received
        for repo, files in repos.items():
            self.commit(repo, files)

    def commit(self, repo: str, files: dict[str, bytes]) -> str:
        """A new commit of `repo` with these files, which "main" then points at; returns its sha."""
        sha = hashlib.sha1(f"{repo} {len(self.commits)}".encode()).hexdigest()
        self.commits[sha], self.main[repo] = (repo, dict(files)), sha
        return sha

    def __enter__(self) -> "FakeHub":
        self._server = serve(self._handler())
        self.endpoint = self._server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._server.__exit__(*exc)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class HubHandler(QuietHandler):
            def do_GET(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                url = urlsplit(self.path)
                route = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+))?|"
                                     r"/api/datasets/([^/]+/[^/]+)/(tree|paths-info)/([^/]+)(?:/(.*))?|"
                                     r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url.path)
                if route is None:
                    return self.error(404, "RepoNotFound")
                repo = route[1] or route[3] or route[7]
                if repo not in hub.main:  # the hub says 401 to anonymous users, so as not to reveal private repos
                    return self.error(401, "RepoNotFound")
                rev = unquote(route[2] or route[5] or route[8] or "main")
                sha = hub.main[repo] if rev == "main" else rev
                if hub.commits.get(sha, ("",))[0] != repo:
                    return self.error(404, "RevisionNotFound")
                files = hub.commits[sha][1]
                if route[1]:
                    return self.json({"id": repo, "sha": sha, "private": False,
                                      "siblings": [{"rfilename": p} for p in sorted(files)]})
                if route[4] == "tree":
                    return self.tree(files, unquote(route[6] or ""), parse_qs(url.query).get("recursive") == ["true"])
                if route[4] == "paths-info":
                    length = int(self.headers.get("Content-Length", 0))
                    paths = parse_qs(self.rfile.read(length).decode()).get("paths", [])
                    return self.json([entry for p in paths if (entry := hub._entry(files, p))])
                return self.file(files, unquote(route[9]), sha)

            do_HEAD = do_POST = do_GET

            def error(self, status: int, code: str) -> None:
                self.send(status, b'{"error": "%s"}' % code.encode(), {"X-Error-Code": code})

            def json(self, data) -> None:
                self.send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def tree(self, files: dict[str, bytes], folder: str, recursive: bool) -> None:
                prefix = folder + "/" if folder else ""
                below = {p[len(prefix):] for p in files if p.startswith(prefix)}
                if not below:
                    return self.error(404, "EntryNotFound")
                names = set()
                for rest in below:
                    parts = rest.split("/")
                    names.update("/".join(parts[:i + 1]) for i in range(len(parts) if recursive else 1))
                self.json([hub._entry(files, prefix + name) for name in sorted(names)])

            def file(self, files: dict[str, bytes], path: str, sha: str) -> None:
                if path not in files:
                    return self.error(404, "EntryNotFound")
                body, status = files[path], 200
                etag = f'"{hashlib.sha1(body).hexdigest()}"'
                headers = {"Accept-Ranges": "bytes", "ETag": etag, "X-Repo-Commit": sha}
                if start := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    first = int(start[1])
                    headers["Content-Range"] = f"bytes {first}-{len(body) - 1}/{len(body)}"
                    body, status = body[first:], 206
                self.send(status, body, headers, cut_at=len(body) // 2 if path in hub.cut else None)

        return HubHandler

    @staticmethod
    def _entry(files: dict[str, bytes], path: str) -> dict | None:
        """A tree entry: a file with its size, or a folder that holds files."""
        if path in files:
            return {"type": "file", "path": path, "size": len(files[path]),
                    "oid": hashlib.sha1(files[path]).hexdigest()}
        if any(p.startswith(path + "/") for p in files):
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        return None


def read_all(path: str) -> bytes:
    """A remote file's bytes, read as corpus/sources.py reads them: 1 MiB read() calls until b""."""
    with open_remote(path) as f:
        return b"".join(iter(lambda: f.read(1 << 20), b""))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(FileHandler) as url:
        yield url


@pytest.fixture
def hub(monkeypatch) -> Iterator[FakeHub]:
    with FakeHub(AMAZON_2023) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


@pytest.mark.parametrize("name", ["/reviews.jsonl", "/reviews.jsonl.gz"])
@pytest.mark.parametrize("route", ["", "/encoded"])
def test_url_is_read_whole_and_byte_exact(server, route, name):
    url = server + route + name
    assert expand_remote(url) == [url]
    assert read_all(url) == FileHandler.FILES[name]  # a .gz raw: the caller inflates it
    assert describe_remote([url]) == [{"url": url}]


def test_missing_url_is_a_one_line_usage_error(server):
    with pytest.raises(UsageError) as error:
        expand_remote(server + "/missing.jsonl")
    assert server + "/missing.jsonl" in one_line(error) and "404" in str(error.value)


def test_refused_connection_is_a_one_line_pipeline_error():
    url = f"http://127.0.0.1:{closed_port()}/reviews.jsonl"
    with pytest.raises(PipelineError) as error:
        expand_remote(url)
    assert url in one_line(error) and "network" in str(error.value)


def test_connection_closed_half_way_fails_the_read(server):
    url = server + "/cut/reviews.jsonl"
    assert expand_remote(url) == [url]  # HEAD announces the whole file
    with pytest.raises(PipelineError) as error:
        read_all(url)
    assert url in one_line(error) and "before the whole file arrived" in str(error.value)


def test_hub_glob_expands_to_files_pinned_to_the_commit(hub):
    sha = hub.main[AMAZON]
    files = expand_remote(REVIEWS_GLOB)
    assert files == [f"hf://datasets/{AMAZON}@{sha}/raw/review_categories/{name}.jsonl"
                     for name in ("All_Beauty", "Appliances")]
    assert describe_remote(files)[1] == {"url": files[1], "repo": AMAZON, "revision": sha,
                                         "path": "raw/review_categories/Appliances.jsonl"}
    hub.commit(AMAZON, {"raw/review_categories/All_Beauty.jsonl": b'{"title": "newer"}\n'})  # main moves on
    assert read_all(files[0]) == AMAZON_2023[AMAZON]["raw/review_categories/All_Beauty.jsonl"]
    assert expand_remote(REVIEWS_GLOB) == [f"hf://datasets/{AMAZON}@{hub.main[AMAZON]}/raw/review_categories/"
                                           "All_Beauty.jsonl"]


def test_hub_revision_and_single_file(hub):
    old = hub.main[AMAZON]
    hub.commit(AMAZON, {"raw/meta_categories/meta_All_Beauty.jsonl": b'{"title": "newer"}\n'})
    path = "raw/meta_categories/meta_All_Beauty.jsonl"
    [pinned] = expand_remote(f"hf://datasets/{AMAZON}@{old}/{path}")
    assert pinned == f"hf://datasets/{AMAZON}@{old}/{path}"
    assert read_all(pinned) == AMAZON_2023[AMAZON][path]
    [at_main] = expand_remote(f"hf://datasets/{AMAZON}@main/{path}")
    assert read_all(at_main) == b'{"title": "newer"}\n'
    with pytest.raises(UsageError) as error:
        expand_remote(f"hf://datasets/{AMAZON}@no-such-branch/{path}")
    assert "no-such-branch" in one_line(error)


@pytest.mark.parametrize("pattern, words", [
    (f"hf://datasets/{AMAZON}/raw/review_categories/*.parquet", "matches no file"),
    (f"hf://datasets/{AMAZON}/raw/no_such_folder/*.jsonl", "matches no file"),
    (f"hf://datasets/{AMAZON}/raw", "matches no file"),  # a folder, not a file
    ("hf://datasets/McAuley-Lab/No-Such-Dataset/raw/*.jsonl", "dataset McAuley-Lab/No-Such-Dataset is not on"),
    (f"hf://{AMAZON}/raw/review_categories/*.jsonl", "only dataset repositories"),  # a model path
    ("hf://spaces/someone/demo/app.py", "only dataset repositories"),
    ("hf://datasets/McAuley-Lab", "is not a hub path"),
])
def test_hub_bad_paths_are_one_line_usage_errors(hub, pattern, words):
    with pytest.raises(UsageError) as error:
        expand_remote(pattern)
    assert pattern in one_line(error) and words in str(error.value)


def test_hub_transfer_cut_half_way_fails_the_read(hub):
    [path] = expand_remote(f"hf://datasets/{AMAZON}/raw/review_categories/Appliances.jsonl")
    hub.cut.add("raw/review_categories/Appliances.jsonl")
    with pytest.raises(PipelineError) as error:
        read_all(path)
    assert path in one_line(error) and "before the whole file arrived" in str(error.value)
    downloads = [r for r in hub.requests if "/resolve/" in r]
    assert 1 < len(downloads) <= 2, downloads  # huggingface_hub resumes once (with a Range), then gives up


def test_unreachable_hub_is_a_one_line_pipeline_error(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(PipelineError) as error:
        expand_remote(REVIEWS_GLOB)
    assert REVIEWS_GLOB in one_line(error) and "HF_ENDPOINT" in str(error.value)


def test_hub_in_a_subprocess_streams_without_writing_to_disk(hub, tmp_path):
    """HF_ENDPOINT set for a new interpreter reaches the fake hub; nothing lands in the hub's cache or in TMPDIR."""
    cache, tmp = tmp_path / "hf_home", tmp_path / "tmp"
    tmp.mkdir()
    code = ("import sys; from corpus.remote import expand_remote, open_remote\n"
            "for p in expand_remote(sys.argv[1]):\n"
            "    with open_remote(p) as f: sys.stdout.buffer.write(f.read(1 << 20))\n")
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(cache), "HF_HUB_CACHE": str(cache / "hub"),
           "TMPDIR": str(tmp)}
    result = subprocess.run([sys.executable, "-c", code, REVIEWS_GLOB], cwd=REPO_ROOT, env=env, capture_output=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    files = AMAZON_2023[AMAZON]
    assert result.stdout == b"".join(files[f"raw/review_categories/{n}.jsonl"] for n in ("All_Beauty", "Appliances"))
    assert result.stderr == b""
    written = [os.path.join(d, name) for root in (cache, tmp) for d, _, names in os.walk(root) for name in names]
    assert written == []


def corpus_lines(out: str) -> list[str]:
    return [line for split in ("train", "validation") for name in sorted(os.listdir(os.path.join(out, split)))
            for line in open(os.path.join(out, split, name), encoding="utf-8").read().splitlines()]


def test_step_1_reads_urls_as_local_files_and_publishes_nothing_when_cut_half_way(server, tmp_path):
    from corpus.pipeline import CorpusConfig, generate_corpus

    (tmp_path / "reviews.jsonl").write_bytes(JSONL)
    generate_corpus(CorpusConfig(output_dir=str(tmp_path / "local"), data_files=[str(tmp_path / "reviews.jsonl")],
                                 progress=False))
    for i, url in enumerate((server + "/reviews.jsonl", server + "/reviews.jsonl.gz")):
        manifest = generate_corpus(CorpusConfig(output_dir=str(tmp_path / f"url{i}"), data_files=[url], progress=False))
        assert corpus_lines(str(tmp_path / f"url{i}")) == corpus_lines(str(tmp_path / "local"))
        assert manifest["source"]["remote_files"] == [{"url": url}] and manifest["rows_read"] == 20_000
    for name in ("/cut/reviews.jsonl", "/cut/reviews.jsonl.gz"):
        with pytest.raises(PipelineError, match="before the whole file arrived|Not enough data"):  # at open or read
            generate_corpus(CorpusConfig(output_dir=str(tmp_path / "cut"), data_files=[server + name], progress=False))
        assert not (tmp_path / "cut").exists() and not list(tmp_path.glob(".cut.partial-*"))  # nothing published


def test_a_presigned_urls_signature_stays_out_of_the_manifest(server, tmp_path):
    from corpus.pipeline import CorpusConfig, generate_corpus

    url = server + "/bad.jsonl?X-Amz-Signature=secret"  # a bad line: the manifest names it by file and line
    manifest = generate_corpus(CorpusConfig(output_dir=str(tmp_path / "out"), data_files=[url], progress=False))
    assert manifest["rows_read"] == 20_001 and manifest["bad_lines"][0]["line"] == 20_001
    assert "secret" not in (tmp_path / "out" / "manifest.json").read_text()
