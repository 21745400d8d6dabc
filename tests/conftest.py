"""Shared fixtures: real digits data and a briefly trained supernet on it."""

from __future__ import annotations

import logging

import pytest

from regnas.data import load_dataset
from regnas.train import TrainConfig, train_supernet


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def digits_supernet(digits, tmp_path_factory):
    """An mbv3 supernet trained for two short epochs on digits (enough for real, non-random predictions)."""
    out = tmp_path_factory.mktemp("supernet")
    net = train_supernet(digits, out, TrainConfig(epochs=2, batch_size=32, seed=0), "mbv3")
    return net, out


@pytest.fixture(autouse=True)
def _regnas_logs_reach_caplog():
    """`regnas.logs.configure` (run by in-process CLI calls) stops propagation; tests read records through caplog."""
    logging.getLogger("regnas").propagate = True
    yield
