"""Candidate evaluation fanned out over Ray workers, each holding its own supernet and data.

A subnet's predictions depend only on the weights, the arch and the data, and each worker runs
single-threaded like the others, so a search that scores a generation on workers ranks exactly as
one that scores it in process: for the same seed, the family is the same.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import torch

from regnas.data import Dataset
from regnas.errors import RegnasError, require
from regnas.evaluate import Evaluator
from regnas.spaces import Arch, create_space
from regnas.train import Supernet

SEARCH_SPLITS = ("calib", "val", "test")


class _Worker:
    """One Ray actor: a private Evaluator over a copy of the supernet and the search splits."""

    def __init__(self, bundle: dict):
        torch.set_num_threads(1)
        space = create_space(bundle["space"], bundle["config"])
        model = space.build_supernet()
        model.load_state_dict(bundle["state"])
        self.evaluator = Evaluator(Supernet(space, model.eval(), {}), bundle["data"], bundle["calib_size"])

    def predictions(self, arch: Arch, split: str) -> np.ndarray:
        return self.evaluator.predictions(arch, split)


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """A quick TCP probe, so a wrong --ray-address fails in seconds with one line instead of Ray's retries."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RegnasError(f"--ray-address {address!r} is not host:port (or ray://host:port, or auto); pass the head node's address")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RegnasError(
            f"Ray address {address} does not answer ({exc.strerror or exc}); start a cluster there with `ray start --head`, "
            "or drop --ray-address to run on this machine"
        ) from None


class RayPool:
    """`workers` Ray actors that compute subnet predictions for an Evaluator; a local Ray unless `address` is given."""

    def __init__(self, supernet: Supernet, data: Dataset, calib_size: int, workers: int, address: str | None = None):
        ray = require("ray", "ray")
        if address is not None:
            check_ray_address(address)
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            if address is None:  # a private local instance sized to the workers
                where = {"num_cpus": workers, "include_dashboard": False}
            else:  # an existing cluster: ship this regnas to its workers
                where = {"address": address, "runtime_env": {"py_modules": [str(Path(__file__).parent)]}}
            try:
                ray.init(log_to_driver=False, logging_level=logging.ERROR, **where)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RegnasError(f"could not join Ray at {address or 'a local instance'}: {str(exc).splitlines()[0]}") from None
        if address is not None and workers <= 1:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        bundle = ray.put(
            {
                "space": supernet.space.name,
                "config": supernet.space.config,
                "state": {k: v.detach().cpu() for k, v in supernet.model.state_dict().items()},
                "data": Dataset(data.name, {s: data[s] for s in SEARCH_SPLITS}, data.class_names, data.digest),
                "calib_size": calib_size,
            }
        )
        actor = ray.remote(num_cpus=1)(_Worker)
        self.actors = [actor.remote(bundle) for _ in range(workers)]

    @property
    def workers(self) -> int:
        return len(self.actors)

    def map(self, archs: list[Arch], split: str) -> list[np.ndarray]:
        """Predictions of every arch on `split`, in order, spread round-robin over the workers."""
        futures = [self.actors[i % len(self.actors)].predictions.remote(a, split) for i, a in enumerate(archs)]
        return self._ray.get(futures)

    def close(self) -> None:
        for a in self.actors:
            self._ray.kill(a)
        self.actors = []
        if self._owned:
            self._ray.shutdown()
