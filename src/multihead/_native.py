"""multihead's C code, compiled on first use with the machine's C compiler, and loaded.

Each C file of ``csrc/`` is compiled into a shared library of its own (a file that fails to
build, or builds on no compiler, costs only its own users their fast path), on first use:

* ``int8_weights.c``: the product of the int8 weight-only layers
  (:mod:`multihead.quantize.native`), built when the first int8 layer is made;
* ``decode_step.c``: a whole cached decoding step of a float32
  :class:`~multihead.modules.models.DecoderLM` (:mod:`multihead.modules.native_decode`), built
  when such a model first decodes.

Building: with ``$CC`` (default ``cc``; it may carry arguments, e.g. ``"ccache gcc"``),
``-O3 -march=native -fopenmp`` (then without ``-fopenmp``, then ``-O3`` alone, for compilers
that lack them), into a cache directory (``$MULTIHEAD_CACHE_DIR``, else
``$XDG_CACHE_HOME/multihead``, else ``~/.cache/multihead``; one that cannot be written: a private
temporary directory, removed once the library is loaded). It is written to a temporary name and
renamed, and its name is a hash of the source (with ``simd.h``), the compiler, the flags, the CPU's description
from ``/proc/cpuinfo`` and the instruction-set macros ``-march=native`` turns on, so a cache
shared by different CPUs holds one library for each. Where no compiler works, or with
``MULTIHEAD_NATIVE=0``, :func:`native_problem` says why, and each user of the library falls
back to PyTorch (see theirs). A compiler that hangs is given up after ``_BUDGET_S`` seconds in
all, its child processes killed with it.

Calls go through :mod:`ctypes`, which releases the GIL for the call; the callers check every
shape, dtype, device and layout first, since the C code trusts its pointers. Threads: PyTorch's
intra-op count (``torch.get_num_threads()``). The library links the OpenMP runtime by its usual
name (``libgomp.so.1`` with GCC); PyTorch's Linux wheels load one of that name first, which the
library then shares; a PyTorch with another OpenMP runtime leaves the two side by side (correct,
with two thread pools).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["native_available", "native_problem", "vector_lanes"]

_CSRC = Path(__file__).with_name("csrc")
_HEADERS = (_CSRC / "simd.h",)
INT8 = "int8_weights"
DECODE = "decode_step"
# Per library: the function that reports its interface version, and the version expected.
_ABI = {INT8: ("mh_int8_abi", 1), DECODE: ("mh_decode_abi", 1)}
_FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],  # a compiler without OpenMP: one thread
    ["-O3"],  # a compiler without -march=native: the plain C loop
)


def _cache_dir() -> Path:
    explicit = os.environ.get("MULTIHEAD_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "multihead"


_BUDGET_S = 300.0  # all compiler calls of one build together: a hanging compiler gives up


def _run(command: list[str], deadline: float) -> subprocess.CompletedProcess[str] | None:
    """Run ``command`` until ``deadline`` (``time.monotonic()``); ``None`` if it cannot start.
    On a timeout the whole process group is killed (a compiler's own children too) and the
    result has return code -9 and "timed out" as its stderr."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return subprocess.CompletedProcess(command, -9, "", "timed out")
    try:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, killed as one
        )
    except OSError:
        return None
    try:
        out, err = process.communicate(timeout=remaining)
    except subprocess.TimeoutExpired:
        if hasattr(os, "killpg"):
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
        process.kill()
        process.communicate()
        return subprocess.CompletedProcess(command, -9, "", f"timed out after {remaining:.0f} s")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _machine(cc: list[str], flags: list[str], deadline: float) -> str:
    """What a build with ``flags`` depends on besides the source: the compiler's version, the
    flags, the CPU's description and, with ``-march=native``, the macros it turns on (the
    instruction sets the compiler will use: what tells two CPUs apart on every platform)."""
    parts = [" ".join(cc), " ".join(flags), platform.machine()]
    version = _run([*cc, "--version"], deadline)
    parts.append(version.stdout if version is not None else "")
    try:
        described = {
            line.strip()
            for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
            if line.split(":")[0].strip()
            in ("flags", "Features", "model name", "CPU implementer", "CPU part", "CPU variant")
        }
        parts.append("\n".join(sorted(described)))
    except OSError:
        parts.append(platform.processor())
    if "-march=native" in flags:
        macros = _run([*cc, *flags, "-dM", "-E", "-x", "c", os.devnull], deadline)
        parts.append(macros.stdout if macros is not None and macros.returncode == 0 else "")
    return "\0".join(parts)


def _flag_sets() -> list[list[str]]:
    """The flags to try in order; ``$MULTIHEAD_CFLAGS`` is appended to each (tests use it to
    build the AVX2 and plain C paths on an AVX-512 machine)."""
    extra = shlex.split(os.environ.get("MULTIHEAD_CFLAGS", ""))
    return [[*flags, *extra] for flags in _FLAG_SETS]


def _build(name: str, cc: list[str], deadline: float) -> tuple[Path, bool]:
    """Compile ``csrc/{name}.c`` into the cache (once per source, compiler, flags and CPU);
    return the shared library's path and whether it lies in a temporary directory of its own
    (the cache directory could not be written; the caller removes it once loaded). Raises
    ``RuntimeError`` with the compiler's messages."""
    path = _CSRC / f"{name}.c"
    source = b"\0".join(p.read_bytes() for p in (path, *_HEADERS))
    temporary = False
    try:
        directory = _cache_dir() / "kernels"
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=directory, prefix=".probe.").close()
    except OSError:
        directory, temporary = Path(tempfile.mkdtemp(prefix="multihead-kernels-")), True
    targets = []
    for flags in _flag_sets():
        machine = _machine(cc, flags, deadline)
        key = hashlib.sha256(source + b"\0" + machine.encode()).hexdigest()[:20]
        targets.append((flags, directory / f"{name}-{key}.so"))
    for _, target in targets:  # a build from an earlier process, with any flag set
        if target.exists():
            return target, temporary
    errors = []
    for flags, target in targets:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            command = [*cc, *flags, "-std=c11", "-shared", "-fPIC", str(path), "-o", tmp, "-lm"]
            done = _run(command, deadline)
            if done is not None and done.returncode == 0:
                os.chmod(tmp, 0o755)
                os.replace(tmp, target)  # another process may have won the race: same bytes
                return target, temporary
            reason = "did not start" if done is None else done.stderr.strip()[-500:]
            errors.append(f"{' '.join(command)}: {reason}")
            if done is not None and done.returncode == -9:
                break  # timed out: the other flag sets would hang as well
        finally:
            Path(tmp).unlink(missing_ok=True)
    if temporary:
        shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError("; ".join(errors))


@functools.cache
def _library(name: str = INT8) -> ctypes.CDLL | str:
    """The loaded library of ``csrc/{name}.c``, or why there is none (a string)."""
    if os.environ.get("MULTIHEAD_NATIVE", "1") == "0":
        return "MULTIHEAD_NATIVE=0"
    try:
        cc = shlex.split(os.environ.get("CC") or "cc")
        _flag_sets()  # $MULTIHEAD_CFLAGS parses
    except ValueError as exc:
        return f"$CC or $MULTIHEAD_CFLAGS cannot be split into words ({exc})"
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({' '.join(cc)!r} is not on PATH; set CC)"
    deadline = time.monotonic() + _BUDGET_S
    version = _run([*cc, "--version"], deadline)
    if version is None or version.returncode != 0:
        return f"the C compiler {' '.join(cc)!r} does not run"
    try:
        path, temporary = _build(name, cc, deadline)
    except (OSError, RuntimeError) as exc:
        return f"compiling {name}.c failed: {exc}"
    torch.get_num_threads()  # PyTorch's OpenMP runtime is loaded first (see the docstring)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"loading {path} failed: {exc}"
    finally:
        if temporary:  # the loaded mapping outlives the file
            shutil.rmtree(path.parent, ignore_errors=True)
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    try:
        abi, expected = _ABI[name]
        getattr(lib, abi).restype = i32
        if getattr(lib, abi)() != expected:
            return f"{path} has {abi} {getattr(lib, abi)()}, expected {expected}"
        if name == INT8:
            lib.mh_int8_lanes.restype = i32
            lib.mh_int8_mm.restype = None
            lib.mh_int8_mm.argtypes = [ptr, i64, i64, ptr, i64, ptr, i64, ptr, ptr, i32]
        else:
            lib.mh_decode_lanes.restype = i32
            lib.mh_decode_step.restype = i32
            lib.mh_decode_step.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i32]
    except AttributeError as exc:  # a symbol missing: not the library this module expects
        return f"{path} is not the expected library: {exc}"
    return lib


def native_problem(name: str = INT8) -> str | None:
    """Why the library of ``csrc/{name}.c`` (default: the int8 kernel) cannot run here (no
    compiler, ``MULTIHEAD_NATIVE=0``, a failed build), or ``None`` when it can. The first call
    may compile it (about a second)."""
    lib = _library(name)
    return lib if isinstance(lib, str) else None


def native_available(name: str = INT8) -> bool:
    """Whether the library of ``csrc/{name}.c`` runs here (see :func:`native_problem`)."""
    return native_problem(name) is None


def vector_lanes(name: str = INT8) -> int:
    """Float lanes of the path the build of ``csrc/{name}.c`` chose: 16 (AVX-512), 8 (AVX2) or
    1 (plain C)."""
    lib = _library(name)
    if isinstance(lib, str):
        raise RuntimeError(f"multihead's C code is not available: {lib}")
    return int(lib.mh_int8_lanes() if name == INT8 else lib.mh_decode_lanes())
