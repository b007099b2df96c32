"""Writing files so that a reader never sees half of one: the one atomic writer every command,
trainer, plot and benchmark uses."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes | Callable[[BinaryIO], None]
) -> Path:
    """Write ``data`` (text as UTF-8, bytes, or a function writing to a binary file) to
    ``path`` atomically: into a temporary file in the same folder, then renamed over ``path``,
    so a reader never sees half a file and a crash leaves the old file intact. Missing parent
    folders are made; the file is readable by all (0644), as a picture or report is meant to be.

    Example:
        >>> import tempfile
        >>> write_atomic(f"{tempfile.mkdtemp()}/x.txt", "hi").read_bytes()
        b'hi'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray)):
                f.write(data)
            else:
                data(f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private (0600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
