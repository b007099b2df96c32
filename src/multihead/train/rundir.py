"""Run directories: checked before use, and locked so that one training run owns each.

Two runs writing into one folder interleave ``metrics.jsonl`` and overwrite each other's
checkpoints. :func:`lock_run_dir` takes a lock file (``.multihead.lock``, holding the owner's
PID) for the length of a run and removes it at the end; a second run fails at once with
:class:`RunDirLocked`, naming the PID. On POSIX the lock is an ``flock`` on that file, which the
kernel drops when its process dies, so a lock file left by a killed run is taken over without
any guessing. Where ``fcntl`` is
missing, the file itself is the lock (created with ``O_EXCL``) and a lock whose PID no longer
runs is treated as stale and replaced.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RunDirLocked",
    "check_directory",
    "ensure_directory",
    "lock_run_dir",
    "removed_if_failed",
]

LOCK_NAME = ".multihead.lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory's lock."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f"PID {pid}" if pid is not None else "a process whose PID could not be read"
        super().__init__(
            f"run directory {str(directory)!r} is in use by another training run ({holder}, "
            f"lock file {str(directory / LOCK_NAME)!r}); wait for it to finish or use another "
            f"directory"
        )
        self.directory = directory
        self.pid = pid


def check_directory(path: str | os.PathLike[str], what: str = "out_dir") -> Path:
    """``path`` as a ``Path`` if it is a folder or could be created as one (nothing is created).

    ``NotADirectoryError`` naming ``what`` (e.g. ``"--out"``) when ``path`` or one of its
    parents is a file.

    Example:
        >>> check_directory("runs/demo", "--out")
        PosixPath('runs/demo')
    """
    target = Path(path)
    for folder in (target, *target.parents):
        if folder.exists() and not folder.is_dir():
            where = "is" if folder == target else f"is under {str(folder)!r}, which is"
            raise NotADirectoryError(
                f"{what} {str(target)!r} {where} a file, not a folder; choose another path"
            )
    return target


def ensure_directory(path: str | os.PathLike[str], what: str = "out_dir") -> Path:
    """Create the folder ``path`` (and its parents) unless it exists; a clear error otherwise.

    ``NotADirectoryError`` when ``path`` or one of its parents is a file, ``PermissionError``
    when it cannot be created; both messages name ``what`` (e.g. ``"--out"``).

    Example:
        >>> import tempfile
        >>> ensure_directory(f"{tempfile.mkdtemp()}/a/b").is_dir()
        True
    """
    target = check_directory(path, what)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionError(
            f"{what} {str(target)!r} cannot be created: permission denied"
        ) from None
    return target


@contextlib.contextmanager
def removed_if_failed(path: str | os.PathLike[str], what: str = "out_dir") -> Iterator[Path]:
    """:func:`ensure_directory` for a ``with`` block; when the block fails (or is interrupted)
    the folders it created are removed again unless files were written into them, so a failed
    run leaves no empty folder behind.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()) / "new"
        >>> try:
        ...     with removed_if_failed(d):
        ...         raise ValueError("bad input")
        ... except ValueError:
        ...     pass
        >>> d.exists()
        False
    """
    target = Path(path)
    created = next((p for p in (*reversed(target.parents), target) if not p.exists()), None)
    folder = ensure_directory(target, what)
    try:
        yield folder
    except BaseException:
        if created is not None and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


@contextlib.contextmanager
def lock_run_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold ``directory``'s run lock inside the ``with`` block; yields the lock file's path.

    Raises :class:`RunDirLocked` at once (never waits) when a live process holds it.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with lock_run_dir(d):
        ...     try:
        ...         with lock_run_dir(d):
        ...             pass
        ...     except RunDirLocked as exc:
        ...         print("busy")
        busy
    """
    folder = ensure_directory(directory)
    path = folder / LOCK_NAME
    if fcntl is None:
        with _pid_file_lock(folder, path):
            yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLocked(folder, _read_pid(path)) from None
        # The previous holder unlinks the file as it lets go; a lock taken on that unlinked
        # file locks nothing, so check that the path still names the file we locked.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so no one else can have taken it
        os.close(fd)  # releases the flock


@contextlib.contextmanager
def _pid_file_lock(folder: Path, path: Path) -> Iterator[None]:
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pid = _read_pid(path)
            if pid is not None and _alive(pid):
                raise RunDirLocked(folder, pid) from None
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise RunDirLocked(folder, _read_pid(path))
