"""Batch segmentation throughput (Ray, 1 and 2 workers, vs the single-process engine) and recovery from kills.

    flock /tmp/segcore-cpu.lock .venv/bin/python bench/batch.py

Input: ``--images`` phantom PNGs at 256² (train split), the demo volumes (brain MR 25×256², lung CT 7×512²,
multi-frame DICOM 4×256²) and two corrupt files. Each run is ``python -m segcore predict`` in a fresh process
into a fresh output folder (wall clock includes starting Ray and loading the model; the per-scan rate excludes
them), with refinement on and the default runtime. Then:

- kill a worker: a 2-worker Ray run in which one Ray worker process is SIGKILLed after a third of the scans; the
  run is left to finish (Ray restarts the actor and retries its batch), then rerun;
- crash: a 2-worker Ray run whose driver is SIGKILLed (with its Ray instance) after a third of the scans, then rerun;

and every label map of every run is compared byte for byte with the single-process run's. Writes
bench/results/batch.json.
"""

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOLUMES = ("brain1_mr.nii.gz", "lung1_ct.nii.gz", "phantom_ct_multiframe.dcm")


def make_input(folder: Path, n_images: int) -> dict:
    imgs = sorted((ROOT / "sample_data/phantom/train/images").glob("*.png"))
    imgs += sorted((ROOT / "sample_data/phantom/val/images").glob("*.png"))
    if n_images > len(imgs):
        raise SystemExit(f"only {len(imgs)} phantom images available; asked for {n_images}")
    (folder / "images").mkdir(parents=True)
    for p in imgs[:n_images]:
        shutil.copy(p, folder / "images" / p.name)
    (folder / "volumes").mkdir()
    for name in VOLUMES:
        shutil.copy(ROOT / "sample_data/demo" / name, folder / "volumes" / name)
    (folder / "bad").mkdir()
    (folder / "bad" / "truncated.dcm").write_bytes((ROOT / "sample_data/demo/phantom_ct_512.dcm").read_bytes()[:3000])
    (folder / "bad" / "not_a_scan.png").write_bytes(b"this is not a PNG")
    return {"images_256": n_images, "volumes": list(VOLUMES), "corrupt": 2}


def _cmd(inp: Path, out: Path, engine: str, workers: int, runtime: str = "auto") -> list[str]:
    return [sys.executable, "-m", "segcore", "predict", str(inp), "--out", str(out), "--engine", engine,
            "--workers", str(workers), "--runtime", runtime, "--quiet",
            "--json-report", str(out.parent / f"{out.name}.report.json")]


def run(inp: Path, out: Path, engine: str, workers: int, runtime: str = "auto") -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(_cmd(inp, out, engine, workers, runtime), cwd=ROOT, capture_output=True, text=True,
                       timeout=3600, check=False)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{engine} x{workers} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    rep = json.loads((out.parent / f"{out.name}.report.json").read_text())
    return {"engine": engine, "workers": workers, "runtime": runtime, "wall_s": round(wall, 2), **rep}


def label_hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*_mask.*")) if not p.name.startswith(".")}


def _manifests(out: Path) -> int:
    d = out / ".manifests"
    return sum(1 for _ in d.rglob("*.json")) if d.is_dir() else 0


def _run_processes(driver_pid: int) -> dict[int, str]:
    """Processes of the run started by ``driver_pid``: its Ray daemons (their temp dir is named after the driver)
    and its workers (``SEGCORE_BATCH_DRIVER=<pid>`` in their environment); pid -> command line."""
    found = {}
    marker_env, marker_cmd = f"SEGCORE_BATCH_DRIVER={driver_pid}".encode(), f"ray-segcore-{driver_pid}"
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == driver_pid:
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (p / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker_cmd in cmd or marker_env in env:
            found[int(p.name)] = cmd
    return found


def _ray_workers(driver_pid: int) -> list[int]:
    return sorted(pid for pid, cmd in _run_processes(driver_pid).items() if cmd.startswith("ray::MapWorker"))


def kill_run(inp: Path, out: Path, total: int, mode: str) -> dict:
    """Start a 2-worker Ray run, kill a worker (``mode="worker"``) or the driver (``"driver"``) after a third."""
    proc = subprocess.Popen(_cmd(inp, out, "ray", 2), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    killed = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and proc.poll() is None:
        if _manifests(out) >= total // 3:
            if mode == "worker":
                workers = _ray_workers(proc.pid)
                if workers:
                    killed = workers[0]
                    os.kill(killed, signal.SIGKILL)
            else:
                killed = proc.pid
                os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started
            break
        time.sleep(0.2)
    done_at_kill = _manifests(out)
    _, err = proc.communicate(timeout=1800)
    if mode == "driver":
        for pid in _run_processes(proc.pid):  # what is left of its Ray instance, by id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return {"mode": mode, "killed_pid": killed, "manifests_at_kill": done_at_kill, "returncode": proc.returncode,
            "completed_without_rerun": proc.returncode in (0, 1) and _manifests(out) == total,
            "manifests_after_run": _manifests(out), "stderr_tail": err[-600:] if proc.returncode not in (0, 1) else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "bench/results/batch.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="segcore-batch-bench-"))
    try:
        inp = tmp / "in"
        data = make_input(inp, args.images)
        total = args.images + len(VOLUMES) + 2
        plan = [("local", "local", 1, "auto"), ("ray1", "ray", 1, "auto"), ("ray2", "ray", 2, "auto"),
                ("local_keras", "local", 1, "keras"), ("local_bf16", "local", 1, "openvino-bf16")]
        runs = []
        for name, engine, workers, runtime in plan:
            runs.append(run(inp, tmp / name, engine, workers, runtime))
            runs[-1]["label_maps"] = label_hashes(tmp / name)
        ref = runs[0]["label_maps"]
        base = runs[0]
        for r in runs:
            maps = r.pop("label_maps")
            r["identical_to_local"] = maps == ref
            r["label_maps_differing"] = sum(maps.get(k) != v for k, v in ref.items())
            r["speedup_vs_local_wall"] = round(base["wall_s"] / r["wall_s"], 2)
            r["speedup_vs_local_rate"] = round(r["scans_per_s"] / base["scans_per_s"], 2)
        recovery = []
        for mode in ("worker", "driver"):
            out = tmp / f"kill_{mode}"
            k = kill_run(inp, out, total, mode)
            rerun = run(inp, out, "ray", 2)
            k.update(rerun_processed=rerun["processed"], rerun_skipped=rerun["skipped"], rerun_failed=rerun["failed"],
                     rerun_wall_s=rerun["wall_s"], all_scans_recorded=_manifests(out) == total,
                     identical_to_uninterrupted=label_hashes(out) == ref, label_maps=len(ref))
            recovery.append(k)
        out = {"command": f"flock /tmp/segcore-cpu.lock .venv/bin/python bench/batch.py --images {args.images}",
               "machine": platform.platform(), "cpus": os.cpu_count(), "input": data, "scans": total,
               "runs": runs, "recovery": recovery,
               "note": "wall_s: whole `python -m segcore predict` process (Ray start, model load, all scans, table); "
                       "scans_per_s: scans processed / time from the start of the first scan to the end of the "
                       "last (excludes Ray start and model load); refinement on; runtime auto = the default; label "
                       "maps compared byte for byte with the single-process (local, default runtime) run; the "
                       "recovery runs use 2 Ray workers and the default runtime"}
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
