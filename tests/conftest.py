"""Shared fixtures: the real HAM10000 folder (never downloaded) and small real subsets of it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests
os.environ.setdefault("MPLBACKEND", "Agg")

from edgekd import data as D  # noqa: E402
from edgekd import info  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    path = info.default_data_dir()
    if not path.is_dir():
        pytest.fail(f"the real HAM10000 folder is needed at {path} (set ${info.DATA_ENV})")
    return path


@pytest.fixture(scope="session")
def arrays28(data_dir):
    """Full DermaMNIST at 28 px built offline from the raw images (cached under outputs/cache)."""
    return D.get_dermamnist(28, "raw", data_dir)


@pytest.fixture(scope="session")
def tiny(arrays28):
    """A stratified 28 px subset small enough to train on in seconds."""
    return D.subset(arrays28, {"train": 96, "val": 48, "test": 48})
