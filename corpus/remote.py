"""Remote input files: `https://` URLs and `hf://datasets/OWNER/NAME/PATH` hub paths, streamed through fsspec."""
from typing import BinaryIO

REMOTE_PREFIXES = ("http://", "https://", "hf://")


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


def expand_remote(pattern: str) -> list[str]:
    """The files a remote path or glob names (hf:// paths pinned to the revision they resolve to), in a stable
    order; a missing file, an empty glob or an unreachable host is a one-line UsageError/PipelineError."""
    raise NotImplementedError


def open_remote(path: str) -> BinaryIO:
    """A binary file object that streams the remote file in one pass (never whole in memory or on disk)."""
    raise NotImplementedError


def describe_remote(paths: list[str]) -> list[dict]:
    """What the manifest records of each remote file: its URL, and for hub files the repository and revision."""
    raise NotImplementedError
