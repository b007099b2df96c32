"""The doctests of ``src/multihead`` run in ``make test`` (``--doctest-modules``), with ``torch``
in their namespace as a reader of the examples has it.

The int8 kernel that the tests build (``multihead.quantize.native``) goes to a temporary cache
removed when the run ends, not to the user's ``~/.cache/multihead`` (unless
``MULTIHEAD_CACHE_DIR`` is set)."""

import atexit
import os
import shutil
import tempfile

import pytest
import torch

if "MULTIHEAD_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="multihead-test-cache-")
    os.environ["MULTIHEAD_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(autouse=True)
def _torch_in_doctests(doctest_namespace: dict[str, object]) -> None:
    doctest_namespace["torch"] = torch
