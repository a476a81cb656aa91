"""Multi-worker training: ``tf.distribute.MultiWorkerMirroredStrategy`` from ``TF_CONFIG``, and a local launcher.

Each worker is one process running the same training command with its own ``TF_CONFIG``::

    {"cluster": {"worker": ["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}

Worker 0 is the chief: it writes the model (and logs); the others train the same replicated weights and
discard their copy. The batch size given to the command is the *global* batch, split across the workers; the
training data is sharded by element (every worker reads the same files and keeps its share), so every worker
needs the same data folder (a shared filesystem or a copy per machine). ``python -m segcore train --workers N``
starts N such processes on loopback ports of this machine (:func:`launch_local_workers`); on several machines
set ``TF_CONFIG`` on each and start the command on each (see docs/SCALING.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from typing import Any

import numpy as np

__all__ = [
    "cluster_config",
    "is_chief",
    "launch_local_workers",
    "local_cluster_configs",
    "multi_worker_strategy",
    "num_workers",
    "weights_fingerprint",
    "worker_index",
]


def cluster_config(env: dict | None = None) -> dict | None:
    """The parsed ``TF_CONFIG`` when it names a cluster of workers, else None.

    Raises
    ------
    ValueError
        ``TF_CONFIG`` is not JSON, has no worker list, or its task is not one of the workers.

    Examples
    --------
    >>> cfg = cluster_config({"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, '
    ...                                    '"task": {"type": "worker", "index": 1}}'})
    >>> cfg["task"]["index"], num_workers(cfg)
    (1, 2)
    >>> cluster_config({}) is None
    True
    """
    text = (os.environ if env is None else env).get("TF_CONFIG", "")
    if not text.strip():
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}). Got {text[:200]!r}.") from exc
    workers = cfg.get("cluster", {}).get("worker")
    task = cfg.get("task", {})
    if not workers or not isinstance(workers, list):
        raise ValueError(f"TF_CONFIG needs cluster.worker, a list of host:port. Got {cfg.get('cluster')!r}.")
    if task.get("type") != "worker" or not 0 <= int(task.get("index", -1)) < len(workers):
        raise ValueError(f"TF_CONFIG task must be {{'type': 'worker', 'index': 0..{len(workers) - 1}}}. "
                         f"Got {task!r}.")
    return cfg


def num_workers(cfg: dict | None = None) -> int:
    cfg = cluster_config() if cfg is None else cfg
    return len(cfg["cluster"]["worker"]) if cfg else 1


def worker_index(cfg: dict | None = None) -> int:
    cfg = cluster_config() if cfg is None else cfg
    return int(cfg["task"]["index"]) if cfg else 0


def is_chief(cfg: dict | None = None) -> bool:
    """Worker 0 writes the model and the logs."""
    return worker_index(cfg) == 0


def multi_worker_strategy():
    """``MultiWorkerMirroredStrategy`` over the ``TF_CONFIG`` cluster (create it before any other TensorFlow op)."""
    import tensorflow as tf

    if cluster_config() is None:
        raise ValueError("TF_CONFIG names no cluster of workers; set it on every worker (see docs/SCALING.md).")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_cluster_configs(n: int) -> list[str]:
    """``TF_CONFIG`` values for ``n`` workers on free loopback ports of this machine."""
    if n < 2:
        raise ValueError(f"A multi-worker cluster needs at least 2 workers. Got {n}.")
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(n)]
    return [json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}) for i in range(n)]


def launch_local_workers(argv: list[str], n: int, *, threads_per_worker: int | None = None,
                         env: dict[str, str] | None = None, timeout: float | None = None) -> list[int]:
    """Run ``python -m segcore <argv>`` as ``n`` workers of one loopback cluster; returns their exit codes.

    Worker 0's output goes to this process's stdout/stderr; the others' stderr too (their stdout is dropped
    except for lines starting with ``{"worker"``, their weight fingerprints).
    """
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i, tf_config in enumerate(local_cluster_configs(n)):
        e = {**os.environ, **(env or {}), "TF_CONFIG": tf_config, "TF_NUM_INTRAOP_THREADS": str(threads),
             "TF_NUM_INTEROP_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "segcore", *argv], env=e,
                                      stdout=None if i == 0 else subprocess.PIPE, text=True))
    codes = []
    for i, p in enumerate(procs):
        if i == 0:
            codes.append(p.wait(timeout=timeout))
            continue
        out, _ = p.communicate(timeout=timeout)
        for line in (out or "").splitlines():
            if line.startswith('{"worker"'):
                print(line, flush=True)
        codes.append(p.returncode)
    return codes


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over the model's weights (dtype, shape and bytes): equal on every worker of a synchronous cluster."""
    h = hashlib.sha256()
    for w in model.get_weights():
        w = np.ascontiguousarray(w)
        h.update(f"{w.dtype}{w.shape}".encode())
        h.update(w.tobytes())
    return h.hexdigest()
