"""Files written whole or not at all: written to a temporary file beside the target, then renamed
over it. The rename is atomic within a file system, so a reader (another sweep driver, a resumed
run, a notebook) finds the old file or the new one, never a torn one."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` (its folder made if missing) for the block to write; renamed
    over ``path`` when the block ends, removed when it raises. The name is unique per process and
    thread, so writers of one file side by side never share a temporary; ``suffix`` ends it (a writer
    that appends its own extension, as ``numpy.savez`` does ``.npz``, needs that one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """The SHA-256 of a file's bytes, read a MiB at a time."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
