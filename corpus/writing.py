"""Write sharded one-sentence-per-line files, the manifest, and swap the finished corpus into place."""
import hashlib
import os
import tempfile
from typing import Any

from common import UsageError, write_json_atomic

SHARD_NAME = "corpus_chunk_{:05d}.txt"
MANIFEST = "manifest.json"


class ShardWriter:
    """Writes lines into numbered shards of at most `lines_per_shard` lines.

    Each shard is written under a temporary name and renamed once complete, so a shard that
    carries its final name is always whole.
    """

    def __init__(self, directory: str, lines_per_shard: int) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.lines_per_shard = lines_per_shard
        self.shards: list[dict[str, Any]] = []
        self._file = None
        self._lines = 0
        self._bytes = 0
        self._sha = hashlib.sha256()

    def write(self, line: str) -> None:
        self.write_lines([line.encode("utf-8")])

    def write_lines(self, lines: list[bytes]) -> None:
        """Append UTF-8 lines (none holding a newline), one write per shard they fall in."""
        start = 0
        while start < len(lines):
            if self._file is None:
                self._file = open(self._path(len(self.shards)) + ".tmp", "wb")
            part = lines[start : start + self.lines_per_shard - self._lines]
            start += len(part)
            data = b"\n".join(part) + b"\n"
            self._file.write(data)
            self._sha.update(data)
            self._lines += len(part)
            self._bytes += len(data)
            if self._lines == self.lines_per_shard:
                self._finish_shard()

    def close(self) -> list[dict[str, Any]]:
        """Finish the last, partial shard and return the shard list (file, lines, bytes, sha256)."""
        if self._file is not None:
            self._finish_shard()
        return self.shards

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, SHARD_NAME.format(index))

    def _finish_shard(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        path = self._path(len(self.shards))
        os.replace(path + ".tmp", path)
        self.shards.append(
            {"file": os.path.basename(path), "lines": self._lines, "bytes": self._bytes, "sha256": self._sha.hexdigest()}
        )
        self._file, self._lines, self._bytes, self._sha = None, 0, 0, hashlib.sha256()


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    write_json_atomic(os.path.join(directory, MANIFEST), manifest)


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse to touch a directory that holds anything but an earlier corpus we may replace."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output-dir {output_dir!r} is a file; choose a directory path")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    if not overwrite:
        raise UsageError(f"--output-dir {output_dir!r} is not empty; pass --overwrite to replace it or choose another")
    if not os.path.isfile(os.path.join(output_dir, MANIFEST)):
        raise UsageError(
            f"--output-dir {output_dir!r} holds files but no {MANIFEST}, so it is not a corpus this script "
            "wrote; --overwrite only replaces corpora, choose another directory"
        )


def staging_dir(output_dir: str) -> str:
    """A fresh directory beside the output, on the same filesystem so the final rename is atomic."""
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output_dir))}.partial-", dir=parent)
