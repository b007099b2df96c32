"""The doctests of ``src/multihead`` run in ``make test`` (``--doctest-modules``), with ``torch``
in their namespace as a reader of the examples has it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_in_doctests(doctest_namespace: dict[str, object]) -> None:
    doctest_namespace["torch"] = torch
