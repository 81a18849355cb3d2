"""Atomic writes of files and folders: a crash mid-write never leaves a half-written file or folder behind.

Both work the same way: write under a temporary name beside the target, fsync the data, rename onto the
target (atomic on POSIX within one filesystem), fsync the parent folder so the rename survives a crash,
and remove the temporary on failure.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the same folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared cache must stay readable
        _fsync(tmp)  # data on disk before the rename makes it visible
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(file: str | os.PathLike) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable. Best effort: a no-op where folders cannot be opened or synced
    (Windows, some network filesystems); the rename itself has happened either way."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TMP_DIR_PREFIX = ".tmp-"  # temporary folders are <parent>/.tmp-<writer pid>-<random>


def remove_stale_tmp_dirs(parent: str | os.PathLike) -> None:
    """Delete temporary folders in `parent` whose writer process is gone (killed mid-write: SIGKILL, OOM)."""
    for tmp in Path(parent).glob(f"{TMP_DIR_PREFIX}*"):
        try:
            os.kill(int(tmp.name.split("-")[1]), 0)  # raises if no such process
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


class AtomicDir:
    """A temporary folder in `parent` that becomes a complete folder in one rename (`commit`) or vanishes
    (`abort`). For writers that fill a folder over several calls, or only know its name at the end;
    `atomic_dir` is the `with` form."""

    def __init__(self, parent: str | os.PathLike):
        self.parent = Path(parent)
        self.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp_dirs(self.parent)
        self.path = self.parent / f"{TMP_DIR_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.path.mkdir()

    def commit(self, target: str | os.PathLike, complete: str | None = None) -> Path:
        """fsync every file, then rename the folder onto `target` (in `parent`) and return it. If `target`
        already exists and holds the file `complete` (a twin written by another process: another rank
        building the same content-addressed folder), keep it and drop ours. Otherwise a failed rename
        removes ours and raises the OSError."""
        target = Path(target)
        try:
            for root, _, files in os.walk(self.path):  # data on disk before the rename makes the folder visible
                for name in files:
                    _fsync(Path(root) / name)
            os.rename(self.path, target)  # onto a missing or empty folder; fails if target is not empty
        except OSError:
            self.abort()
            if complete is None or not (target / complete).exists():
                raise
            return target
        except BaseException:
            self.abort()
            raise
        _fsync_dir(target.parent)
        return target

    def abort(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, complete: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; when the block succeeds it becomes `path` whole (see
    `AtomicDir.commit` for `complete`), when it raises it is removed and `path` is left untouched."""
    folder = AtomicDir(Path(path).parent)
    try:
        yield folder.path
    except BaseException:
        folder.abort()
        raise
    folder.commit(path, complete)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
