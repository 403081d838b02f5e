"""Driver-side cluster setup: connect, check that trials fit and that storage is shared, share data once."""

from __future__ import annotations

import os
import socket
import sys
import uuid
from pathlib import Path

import ray
from ray._common.utils import get_ray_address_file  # no public API resolves "auto": tests/test_ray_internals.py guards it
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import cxr
import search_spaces
import tune
from cxr.dataset import CxrData
from cxr.errors import InputError
from tune.loopback import ensure_private_token, is_loopback, requested_address
from tune.settings import is_uri

# with --workers-per-trial > 1 the Tune trial only coordinates its Ray Train worker group (Ray rejects 0)
COORDINATOR_CPU = 0.01


def connect(address: str | None) -> None:
    """Join the cluster at address or $RAY_ADDRESS (shipping our packages to its workers), or start a
    private local one."""
    address = requested_address(address)
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env={"py_modules": [cxr, tune, search_spaces]},
                     logging_level="WARNING", log_to_driver=True)
        except ConnectionError as exc:
            raise InputError(f"no Ray cluster at --address {address} ({str(exc).splitlines()[0][:200]}): "
                             "start one with `ray start --head` or fix the address") from None
    else:
        ensure_private_token()
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=True)
        node_ip = ray.util.get_node_ip_address()
        if not is_loopback(node_ip):  # Ray was imported before tune.loopback.bind_to_loopback
            print(f"note: the local Ray cluster listens on {node_ip}, not only on 127.0.0.1", file=sys.stderr)


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """ray.init waits minutes on a host:port where nothing listens (also for "auto" when the last cluster
    started on this machine is gone): try the port of address (or $RAY_ADDRESS) first. No address: nothing to check."""
    address = requested_address(address)
    if not address:
        return
    given = address
    if address == "auto":
        current = Path(get_ray_address_file(None))  # where `ray start` records the cluster it started
        if not current.is_file():
            raise InputError("--address auto: no Ray cluster was started on this machine: start one with "
                             "`ray start --head` or pass the head's host:port")
        address = current.read_text().strip()
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        where = given if given == address else f"{given} ({address})"
        raise InputError(f"no Ray cluster answers at --address {where} ({exc}): start one with "
                         "`ray start --head --port <port>` there, or fix the address") from None


def check_resources(cpus_per_trial: float, gpus_per_trial: float, workers_per_trial: int = 1) -> None:
    """Fail fast when the cluster can never hold one trial: Ray would leave it PENDING forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for kind, wanted, flag in (("GPU", gpus_per_trial, "--gpus-per-trial"), ("CPU", cpus_per_trial, "--cpus-per-trial")):
        largest = max((n.get(kind, 0.0) for n in nodes), default=0.0)
        total = sum(n.get(kind, 0.0) for n in nodes)
        coordinator = COORDINATOR_CPU if kind == "CPU" and workers_per_trial > 1 else 0.0
        if wanted > largest or wanted * workers_per_trial + coordinator > total:
            raise InputError(
                f"{flag} {wanted:g} x {workers_per_trial} worker(s) but the largest node has {largest:g} {kind}s "
                f"({total:g} in the whole cluster): lower {flag} or --workers-per-trial, or add nodes with more {kind}s"
            )


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many one-process trials (or final members) the cluster holds at once."""
    total = ray.cluster_resources()
    slots = int(total.get("CPU", 0) // cpus_per_trial)
    if gpus_per_trial > 0:
        slots = min(slots, int(total.get("GPU", 0) // gpus_per_trial))
    return max(1, slots)


def check_storage(storage_path: str) -> None:
    """On several nodes Ray Tune (>= 2.7) needs storage they all share: check that each node sees a marker
    file the driver writes, before any trial starts. URIs (s3://, gs://, ...) are shared by nature."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2 or is_uri(storage_path):
        return
    folder = Path(storage_path).resolve()
    while not folder.exists():  # the experiment folder itself is created only once every check passed
        folder = folder.parent
    marker = folder / f".cxr-shared-check-{uuid.uuid4().hex}"
    marker.touch()
    try:
        seen = ray.get([
            _exists.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
            for n in nodes
        ])
    finally:
        marker.unlink()
    blind = [n["NodeManagerAddress"] + f" ({n['NodeID'][:8]})" for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise InputError(
            f"storage {storage_path} is node-local: nodes {', '.join(blind)} cannot see it, and Ray Tune needs "
            "storage every node shares on a multi-node cluster: pass --storage-path on NFS or a URI (s3://, gs://)"
        )


@ray.remote(num_cpus=0)
def _exists(path: str) -> bool:
    return os.path.exists(path)


def share(data: CxrData) -> ray.ObjectRef:
    """Put the decoded data set in the object store once: every trial and the retrain read this one copy."""
    return ray.put(data.for_object_store())


def share_weights(states: dict[str, dict]) -> dict[str, ray.ObjectRef]:
    """Pretrained backbone weights fetched once by the driver, one object per backbone."""
    return {backbone: ray.put(state) for backbone, state in states.items()}


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()
