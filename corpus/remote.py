"""Remote input files: `https://` URLs and `hf://datasets/OWNER/NAME/PATH` hub paths, streamed through fsspec."""
import functools
import io
import logging
import os
from typing import Any, BinaryIO, cast

from common import PipelineError, UsageError

REMOTE_PREFIXES = ("http://", "https://", "hf://")
HUB_PREFIX = "hf://"
HUB_FORM = "hf://datasets/OWNER/NAME[@REVISION]/PATH"
CONNECT_TIMEOUT_S = 30
READ_TIMEOUT_S = 60  # a stalled transfer fails after this long without a byte, however long the whole file takes


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


def expand_remote(pattern: str) -> list[str]:
    """The files a remote path or glob names (hf:// paths pinned to the revision they resolve to), in a stable
    order; a missing file, an empty glob or an unreachable host is a one-line UsageError/PipelineError."""
    return _expand_hub(pattern) if pattern.startswith(HUB_PREFIX) else [_check_url(pattern)]


def open_remote(path: str) -> BinaryIO:
    """A binary file object that streams the remote file in one pass (never whole in memory or on disk)."""
    fs, stream = _hub() if path.startswith(HUB_PREFIX) else _http(), None
    try:
        stream = fs.open(path, "rb", block_size=0)  # block_size=0: one streamed GET, no read-ahead cache
        stream.read(0)  # sends the request now, so a missing file is told apart from a transfer cut short
    except _transfer_errors() as e:
        if stream is not None:
            stream.close()
        raise _open_error(path, e) from e
    return cast(BinaryIO, _RemoteFile(path, stream))


def describe_remote(paths: list[str]) -> list[dict]:
    """What the manifest records of each remote file: its URL, and for hub files the repository and revision."""
    from huggingface_hub.utils import parse_hf_uri

    described: list[dict] = []
    for path in paths:
        if path.startswith(HUB_PREFIX):
            uri = parse_hf_uri(path)
            described.append({"url": path, "repo": uri.id, "revision": uri.revision, "path": uri.path_in_repo})
        else:
            described.append({"url": redact(path)})
    return described


def redact(path: str) -> str:
    """A URL without its query string, which may carry an access signature (a presigned URL): fit for a manifest."""
    return path.split("?", 1)[0] + "?..." if is_remote(path) and "?" in path else path


class _RemoteFile(io.RawIOBase):
    """A streamed remote file whose transfer failures are one-line PipelineErrors."""

    def __init__(self, path: str, stream: Any) -> None:
        super().__init__()
        self.path, self._stream = path, stream

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return self._stream.read(-1 if size is None else size)
        except _transfer_errors() as e:
            raise PipelineError(f"could not read {redact(self.path)}: the connection ended before the whole file arrived "
                                f"({_detail(e)}); re-run, or download the file first") from e

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None  # the hub's stream releases its connection only when it is garbage-collected
        super().close()


def _http() -> Any:
    """fsspec's HTTP file system, handing over the bytes as stored."""
    import aiohttp
    from fsspec.implementations.http import HTTPFileSystem

    # aiohttp would cut any transfer longer than 5 minutes (its default total timeout) and inflate a body sent with
    # Content-Encoding, while the caller inflates .gz files itself
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
    headers = {"Accept-Encoding": "identity"}
    return HTTPFileSystem(client_kwargs={"timeout": timeout, "auto_decompress": False, "headers": headers})


def _hub() -> Any:
    """huggingface_hub's file system (endpoint: HF_ENDPOINT, token: the saved login, if any)."""
    from huggingface_hub import HfFileSystem

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its retry warnings would garble the progress bar
    # huggingface_hub reads HF_ENDPOINT once, at import, and builds download URLs from that value: passing it on
    # each call keeps listings and downloads on the same endpoint even if it was set after the import
    return HfFileSystem(endpoint=os.environ.get("HF_ENDPOINT", "").rstrip("/") or None)


@functools.cache
def _transfer_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the HTTP libraries raise when a request or a transfer fails."""
    import aiohttp

    try:  # huggingface_hub 2 talks HTTP through httpx2, 1.x through httpx
        import httpx2 as httpx
    except ImportError:
        import httpx
    return OSError, aiohttp.ClientError, httpx.HTTPError  # OSError covers timeouts and the hub's HTTP errors


def _check_url(url: str) -> str:
    """The URL, once its server has answered that the file is there."""
    try:
        _http().info(url)  # HEAD, or a GET left unread where HEAD is refused
    except _transfer_errors() as e:
        raise _open_error(url, e) from e
    return url


def _open_error(path: str, e: BaseException) -> Exception:
    """A missing file as a UsageError, anything else (no answer, a server error) as a PipelineError."""
    import aiohttp
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    cause = e.__cause__ if isinstance(e, FileNotFoundError) and e.__cause__ else e  # fsspec wraps every failure
    if isinstance(cause, aiohttp.ClientPayloadError):  # a small file can arrive, cut, while it is being opened
        return PipelineError(f"could not read {redact(path)}: the connection ended before the whole file arrived "
                             f"({_detail(cause)}); re-run, or download the file first")
    if isinstance(cause, aiohttp.ClientResponseError) and cause.status in (401, 403, 404, 410):
        return UsageError(f"{redact(path)} cannot be read: the server answered {cause.status} {cause.message}; check the URL")
    if isinstance(cause, (FileNotFoundError, EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)):
        return UsageError(f"{redact(path)} is not there; check the URL or path")
    return PipelineError(f"could not open {redact(path)} ({_detail(cause)}); check the address and the network, then re-run")


def _expand_hub(pattern: str) -> list[str]:
    """The dataset files an hf:// path or glob names, each pinned to the commit its revision resolves to now."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfUriError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.utils import parse_hf_uri

    try:
        uri = parse_hf_uri(pattern)
    except HfUriError as e:
        raise UsageError(f"--data-files {pattern!r} is not a hub path {HUB_FORM} ({_detail(e)})") from e
    if uri.type != "dataset":
        raise UsageError(f"--data-files {pattern!r}: only dataset repositories can be read; use {HUB_FORM}")
    fs = _hub()
    try:
        sha = HfApi(endpoint=fs.endpoint).dataset_info(uri.id, revision=uri.revision).sha
        pinned = f"{HUB_PREFIX}datasets/{uri.id}@{sha}/{uri.path_in_repo}"
        found = fs.glob(pinned, detail=True)
    except RepositoryNotFoundError as e:
        raise UsageError(f"--data-files {pattern!r}: dataset {uri.id} is not on {fs.endpoint}, or is private or gated "
                         "(then log in with `hf auth login`); check the name") from e
    except RevisionNotFoundError as e:
        raise UsageError(f"--data-files {pattern!r}: dataset {uri.id} has no revision {uri.revision!r}") from e
    except _transfer_errors() as e:
        raise PipelineError(f"could not list {pattern} on {fs.endpoint} ({_detail(e)}); check the network "
                            "(and HF_ENDPOINT, if set), then re-run") from e
    files = sorted(HUB_PREFIX + name for name, info in found.items() if info["type"] == "file")
    if not files:
        raise UsageError(f"--data-files {pattern!r} matches no file in dataset {uri.id} at {sha}; check the path "
                         "or glob")
    return files


def _detail(e: BaseException) -> str:
    """An exception as one short line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
