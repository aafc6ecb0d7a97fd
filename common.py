"""What the three steps share: their error types, the runner that turns those into one line and an exit
code, and atomic publishing of a finished output directory or JSON file."""
import argparse
import errno
import json
import os
import secrets
import shutil
import sys
from typing import Any, Callable, NoReturn


def check_own_checkout(script: str) -> None:
    """Stop in one line when Python imports this project's packages from somewhere else than the checkout the
    script is in (an editable install of another clone, a stray PYTHONPATH): that code, not the code beside the
    script, would run. No sys.path edits (the style guide): the fix is the user's (docs/troubleshooting.md).
    A script calls it first; were this module another checkout's, its own location would give that away."""
    from importlib.util import find_spec

    here = os.path.dirname(os.path.dirname(os.path.realpath(script)))
    for name in ("common", "corpus", "tokenizer", "training"):
        spec = find_spec(name)
        where = os.path.realpath(spec.origin) if spec and spec.origin else None
        home = where and os.path.dirname(where if name == "common" else os.path.dirname(where))
        if home != here:
            sys.exit(f"error: this script is in {here} but Python imports {name!r} from {where or 'nowhere'}; "
                     f"run `pip install -e {here}` to use this checkout"
                     + (f", or run the script in {home}" if home else "") + " (see docs/troubleshooting.md)")


class UsageError(Exception):
    """The command line or its inputs are wrong (exit code 2)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as the project reports bad input: one line, exit code 2 (through
    run_main), instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


class PipelineError(Exception):
    """Something went wrong while running (exit code 1)."""


class Interrupted(Exception):
    """Stopped by a signal after saving a checkpoint (exit code 128 + signal number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


def run_main(main: Callable[[], None]) -> int:
    """Run a script's main(); print bad input as one line on stderr instead of a traceback."""
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # disk full, permissions, vanished files: name the file and what to check
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; check free disk space and permissions, then re-run", file=sys.stderr)
        return 1
    except Interrupted as e:
        if str(e):  # the other ranks of a multi-process run stop silently: rank 0 says it once
            print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def write_json_atomic(path: str, data: Any) -> None:
    """Write `data` as JSON under a temporary name of its own, then rename it durably: a reader sees the old file
    or the new one, two writers never share a half-written file, a failed write leaves nothing behind, and
    neither a killed process nor a lost machine leaves an empty or torn file."""
    temporary = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"  # not mkstemp's: its files are private (0600)
    f = open(temporary, "x", encoding="utf-8")
    try:
        with f:  # ASCII escapes: a path of undecodable bytes (a lone surrogate in Python) still writes, reads back
            json.dump(data, f, indent=2)
            f.write("\n")
        replace_durably(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def replace_durably(temporary: str, path: str) -> None:
    """os.replace(temporary, path), on disk when it returns. A rename alone survives a killed process, not a
    power cut: the new name can reach the disk before the data, leaving an empty file. So, as databases do,
    the file is fsynced before the rename and its directory after it."""
    fsync_path(temporary)
    os.replace(temporary, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


def fsync_path(path: str) -> None:
    """fsync a file or a directory by its name (a directory: its entries, such as a rename in it). Filesystems
    that cannot fsync a directory (SMB/CIFS, sshfs, gocryptfs: EINVAL or ENOTSUP) are let be, as borg and
    PostgreSQL do: there the rename is as durable as they make it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if not (os.path.isdir(path) and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)):
            raise
    finally:
        os.close(fd)


def publish(staging: str, output_dir: str, fsync_files: bool = False) -> None:
    """Replace the output directory by the finished staging directory; the old one goes only now. With
    `fsync_files`, its files reach the disk first (a writer that did not fsync them, such as save_pretrained)."""
    if fsync_files:
        for name in os.listdir(staging):
            if os.path.isfile(os.path.join(staging, name)):
                fsync_path(os.path.join(staging, name))
        fsync_path(staging)
    old = None
    if os.path.isdir(output_dir):
        old = staging + ".old"
        os.replace(output_dir, old)
    os.replace(staging, output_dir)
    fsync_path(os.path.dirname(os.path.abspath(output_dir)))  # the rename on disk before the old copy goes
    if old:
        shutil.rmtree(old, ignore_errors=True)
