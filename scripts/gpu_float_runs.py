"""Train several ``cifar10-cnn11`` float runs at once on one GPU, all ending inside a wall-clock budget.

A lent GPU machine comes for a fixed number of minutes; one small network leaves most of a GPU idle,
so this driver runs a few variants of the float phase side by side (``imcflow train ... --device
cuda``), each with the most epochs that end before the deadline:

1. decode CIFAR-10 once into the cache the runs share;
2. trial: every variant trains 3 epochs alongside the others (and, with ``--smoke``, a tiny float +
   distillation + QAT run checks the whole ``--device cuda`` path, the bit-true ADC epoch included);
   the fastest epoch after the first and each run's start-up time size the real runs;
3. the real runs, concurrently, each ``--epochs-float E`` with its own E (at most ``--max-epochs``);
4. each run's float weights (or, at the deadline, its last checkpoint), a summary with the exact
   commands, and a tarball of the logs go to ``--out``.

Used for session 6's float runs (docs/cnn11.md, "Sixth session"). Runs on the CPU as well (``--device cpu
--limit-train N``), which is how it is checked before a GPU session.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from imcflow.cli import main; sys.exit(main())"]
MODEL = "cifar10-cnn11"
TRIAL_EPOCHS = 3
SAFETY = 1.08   # margin on the measured seconds per epoch (the full test set is evaluated, not 1,000)
# The fastest trial epoch after the first sizes the runs: on an H200 (session 6) the second epoch of
# three concurrent runs still took 5.3 s against 2.5 s from the third on (kernel autotuning), and
# sizing by it left half the budget unused.


def variants(teachers: list[str], given: list[str]) -> dict[str, list[str]]:
    """Run name -> its own ``imcflow train`` options (model name first). ``given`` entries read
    ``NAME=MODEL OPTIONS...``; without any, plain runs and distillation runs of cnn11, distinct seeds."""
    if given:
        return {g.split("=", 1)[0]: shlex.split(g.split("=", 1)[1]) for g in given}
    kd = ["--distill-from", *teachers] if teachers else []
    return {
        "a": [MODEL, "--cutout", "8", "--seed", "10"],
        "b": [MODEL, "--cutout", "8", "--seed", "11", *kd],
        "c": [MODEL, "--cutout", "8", "--seed", "12"],
        "d": [MODEL, "--cutout", "8", "--seed", "13", *kd],
    }


def main() -> int:
    args = _parser().parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": _device_info(args.device), "budget_s": args.budget_s, "runs": {}}
    _decode(args)
    summary["decode_s"] = round(time.monotonic() - t0, 1)
    common = ["train", "--data", args.data, "--device", args.device, "--bf16", "--threads",
              str(args.threads), "--cache-dir", args.cache_dir, "--epochs-qat", "0"]
    if args.limit_train:
        common += ["--limit-train", str(args.limit_train)]
    runs = variants(args.teachers, args.variant)
    smoke = _start_smoke(args, work) if args.smoke else None
    trial_t = time.monotonic()
    trials = {v: _start(common + opts + ["--epochs-float", str(TRIAL_EPOCHS), "--limit-test", "1000"],
                        work / f"trial-{v}") for v, opts in runs.items()}
    for v, (proc, log) in trials.items():
        if proc.wait() != 0:
            print(f"trial {v} failed:\n{Path(log).read_text()[-3000:]}", flush=True)
            summary["runs"][v] = {"error": "trial failed"}
    trial_wall = time.monotonic() - trial_t
    plan = {}
    for v in runs:
        if "error" in summary["runs"].get(v, {}):
            continue
        hist = _history(work / f"trial-{v}")
        per_epoch = min(r["seconds"] for r in hist[1:])
        startup = max(0.0, trial_wall - sum(r["seconds"] for r in hist))
        left = deadline - time.monotonic() - startup - args.reserve_s
        plan[v] = max(1, min(args.max_epochs, math.floor(left / (per_epoch * SAFETY))))
        summary["runs"][v] = {"trial_s_per_epoch": round(per_epoch, 2), "startup_s": round(startup, 1),
                              "epochs_float": plan[v]}
    if args.same_epochs and plan:
        plan = {v: min(plan.values()) for v in plan}
        for v in plan:
            summary["runs"][v]["epochs_float"] = plan[v]
    print(f"plan (epochs per run): {plan}", flush=True)
    procs = {}
    for v, epochs in plan.items():
        cmd = common + runs[v] + ["--epochs-float", str(epochs), "--out", str(work / v)]
        summary["runs"][v]["command"] = "imcflow " + shlex.join(cmd)
        procs[v] = _start(cmd, work / v, with_out=False)
    _wait(procs, deadline, work, out, summary, smoke)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--work", required=True, help="run folders (checkpoints every epoch)")
    p.add_argument("--out", required=True, help="results: <run>.float.pt, summary.json, logs.tar.gz")
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--budget-s", type=float, required=True, help="seconds from start until every run must be done")
    p.add_argument("--reserve-s", type=float, default=15.0, help="seconds kept after the runs for copying")
    p.add_argument("--max-epochs", type=int, default=250)
    p.add_argument("--teachers", nargs="*", default=[])
    p.add_argument("--threads", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=MODEL OPTS",
                   help="a run: name, zoo model and its own train options (repeatable)")
    p.add_argument("--same-epochs", action="store_true", help="every run gets the smallest run's epoch count")
    p.add_argument("--limit-train", type=int, default=0, help="CPU check only: train on N images")
    p.add_argument("--smoke", action="store_true", help="also check float + distillation + QAT on the device")
    return p


def _device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _decode(args) -> None:
    from imcflow.data import load_cifar10

    for split in ("train", "test"):
        load_cifar10(args.data, split, args.cache_dir)


def _start(cmd: list[str], folder: Path, with_out: bool = True):
    """Start ``imcflow <cmd>`` (``--out folder`` added when ``with_out``), logging to folder/train.log."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    full = CLI + cmd + (["--out", str(folder)] if with_out else [])
    with open(log, "w") as fh:
        proc = subprocess.Popen(full, stdout=fh, stderr=subprocess.STDOUT)
    return proc, log


def _start_smoke(args, work: Path):
    cmd = ["train", MODEL, "--data", args.data, "--device", args.device, "--bf16", "--threads", "2",
           "--cache-dir", args.cache_dir, "--limit-train", "512", "--limit-test", "256", "--batch-size", "128",
           "--epochs-float", "1", "--epochs-qat", "2", "--qat-ideal-epochs", "1"]
    if args.teachers:
        cmd += ["--distill-from", args.teachers[0]]
    return _start(cmd, work / "smoke")


def _history(folder: Path) -> list[dict]:
    import torch

    return torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)["history"]


def _wait(procs, deadline, work: Path, out: Path, summary: dict, smoke) -> None:
    """Wait for the runs (killing any still going at the deadline), then write the results."""
    while any(p.poll() is None for p, _ in procs.values()) and time.monotonic() < deadline:
        time.sleep(2.0)
    for v, (proc, _) in procs.items():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        summary["runs"][v]["returncode"] = proc.returncode
        done = (work / v / "float.pt").is_file()
        src = work / v / ("float.pt" if done else "last.ckpt")
        if src.is_file():
            shutil.copy(src, out / f"{v}.{'float.pt' if done else 'last.ckpt'}")
        if (work / v / "last.ckpt").is_file():
            hist = _history(work / v)
            summary["runs"][v]["history"] = hist
            summary["runs"][v]["final_test_acc"] = hist[-1]["test_acc"] if hist else None
    if smoke is not None:
        proc, log = smoke
        summary["smoke_returncode"] = proc.poll()
        summary["smoke_tail"] = Path(log).read_text()[-2000:]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        for log in sorted(work.glob("*/train.log")):
            tar.add(log, arcname=f"{log.parent.name}.log")
    for v, r in summary["runs"].items():
        print(v, r.get("epochs_float"), r.get("final_test_acc"), r.get("returncode"), flush=True)


if __name__ == "__main__":
    sys.exit(main())
