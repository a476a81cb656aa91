"""Multi-worker training: two worker processes on loopback ports agree with each other and with one worker."""

import json
import subprocess
import sys

import numpy as np
import pytest

from segcore.distributed import cluster_config, local_cluster_configs, num_workers, worker_index

# tiny model, few steps, deterministic data: no augmentation, no dropout, a per-pixel loss (a batch Dice would
# differ between one global batch and its per-worker halves)
TRAIN = ["train", "--size", "64", "--crop", "0", "--base-filters", "4", "--depth", "2", "--dropout", "0",
         "--loss", "ce", "--no-augment", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "8",
         "--patience", "5", "--lr", "3e-3", "--seed", "3"]


def _run(root, *args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "segcore", *args], cwd=root, capture_output=True, text=True,
                       timeout=timeout, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


@pytest.mark.slow
def test_two_workers_agree_and_match_single_worker_training(tmp_path, root):
    from segcore.models import load_model

    data = tmp_path / "data"
    _run(root, "make-sample-data", "--out", str(data), "--train", "16", "--val", "4", "--test", "4", "--size", "64")
    out = _run(root, *TRAIN, "--data", str(data), "--out", str(tmp_path / "multi"), "--workers", "2")
    lines = [json.loads(ln) for ln in out.splitlines() if ln.startswith('{"worker"')]
    assert sorted(r["worker"] for r in lines) == [0, 1]  # both workers finished
    assert lines[0]["weights_sha256"] == lines[1]["weights_sha256"]  # bit-identical replicated weights
    assert lines[0]["last"]["loss"] == lines[1]["last"]["loss"]  # losses all-reduced over the cluster
    assert lines[0]["max_weight_update"] > 1e-3  # training moved the weights
    _run(root, *TRAIN, "--data", str(data), "--out", str(tmp_path / "single"), "--custom-loop")
    multi, cfg_m = load_model(tmp_path / "multi")
    single, _ = load_model(tmp_path / "single")
    diff = max(float(np.abs(a - b).max()) for a, b in zip(multi.get_weights(), single.get_weights()))
    assert diff < 1e-5 < lines[0]["max_weight_update"], diff  # same training, up to reduction order
    assert cfg_m.metrics["epochs_run"] == 2


def test_tf_config_parsing_and_local_cluster():
    cfgs = [json.loads(c) for c in local_cluster_configs(3)]
    hosts = cfgs[0]["cluster"]["worker"]
    assert len(set(hosts)) == 3 and all(h.startswith("127.0.0.1:") for h in hosts)
    assert [worker_index(c) for c in cfgs] == [0, 1, 2] and num_workers(cfgs[1]) == 3
    assert cluster_config({"TF_CONFIG": json.dumps(cfgs[2])})["task"]["index"] == 2
    with pytest.raises(ValueError, match="not valid JSON"):
        cluster_config({"TF_CONFIG": "{worker"})
    with pytest.raises(ValueError, match="task must be"):
        cluster_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker",
                                                                                         "index": 4}})})
    with pytest.raises(ValueError, match="at least 2 workers"):
        local_cluster_configs(1)
