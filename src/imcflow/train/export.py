"""Copy a training run's weights into the package (``models/weights/``) with a JSON record.

Files written for model ``NAME`` (e.g. ``cifar10-cnn11``):

* ``NAME.pt``: float state_dict (the final float epoch once the phase is done, else its best epoch so far);
* ``NAME.qgraph.json``: the QAT network's exported integers (final QAT epoch, else best so far), which
  :func:`imcflow.pipeline.load_qgraph` prefers for the zoo name;
* ``NAME.ckpt``: the run's full ``last.ckpt``, so a later session can continue with
  ``imcflow train NAME --resume-from .../NAME.ckpt --out NEWDIR``;
* ``NAME.json``: command, epochs, seed, data, accuracies per epoch, date.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import torch

from imcflow.train.checkpoint import TrainError, is_full_checkpoint, load_checkpoint, save_atomic
from imcflow.train.loop import LAST, TrainConfig

DATA_NOTE = "CIFAR-10 (JPEG q75 copy)"


def command_from_config(cfg: dict) -> str:
    """The ``imcflow train`` command line that reproduces a run with config ``cfg`` (a TrainConfig as dict)."""
    default = TrainConfig(data_root="", out_dir="")
    flags = [("epochs_float", "--epochs-float"), ("epochs_qat", "--epochs-qat"),
             ("qat_ideal_epochs", "--qat-ideal-epochs"), ("batch_size", "--batch-size"), ("augment", "--augment"),
             ("cutout_px", "--cutout"),
             ("lr_float", "--lr"), ("lr_qat", "--lr-qat"), ("seed", "--seed"), ("limit_train", "--limit-train"),
             ("limit_test", "--limit-test"), ("device", "--device"), ("chip", "--chip"),
             ("adc_full_scale", "--adc-full-scale")]
    legacy = {"adc_full_scale": "rows"}  # runs recorded before the option existed used it
    parts = ["imcflow", "train", cfg["model"], "--data", cfg["data_root"], "--out", cfg["out_dir"]]
    for key, flag in flags:
        always = key in ("epochs_float", "epochs_qat", "seed") or (key == "lr_qat" and cfg["epochs_qat"] > 0)
        value = cfg.get(key, legacy.get(key, getattr(default, key)))
        if always or value != getattr(default, key):
            parts += [flag, str(value)]
    for key, flag in (("init_from", "--init-from"), ("resume_from", "--resume-from")):
        if cfg.get(key):
            parts += [flag, cfg[key]]
    if cfg.get("distill_from"):
        parts += ["--distill-from", *cfg["distill_from"]]
        for key, flag in (("distill_weight", "--distill-weight"), ("distill_temp", "--distill-temp")):
            parts += [flag, str(cfg.get(key, getattr(default, key)))]
    for key, flag in (("bf16", "--bf16"), ("swa", "--swa")):
        if cfg.get(key):
            parts.append(flag)
    return " ".join(parts)


def export_run(out_dir: str | Path, weights_dir: str | Path, threads: int | None = None) -> dict:
    """Write the run in ``out_dir`` into ``weights_dir`` (see module doc); returns the JSON record.

    ``threads``: torch threads of the training run, recorded when the checkpoint lacks them."""
    out, dest = Path(out_dir), Path(weights_dir)
    last = out / LAST
    if not last.is_file():
        raise TrainError(f"no {LAST} in {out}: nothing to export; train first")
    ckpt = load_checkpoint(last)
    if not is_full_checkpoint(ckpt):
        raise TrainError(f"{last} is not a training checkpoint")
    cfg = ckpt["config"]
    name = cfg["model"]
    history = ckpt["history"]
    record = {
        "model": name,
        "command": command_from_config(cfg),
        "threads": ckpt.get("threads", threads),
        "data": f"{DATA_NOTE} at {cfg['data_root']}" if "shared" in cfg["data_root"] else cfg["data_root"],
        "seed": cfg["seed"],
        "config": cfg,
        "phase": ckpt["phase"],
        "epochs_done": {p: sum(1 for r in history if r["phase"] == p) for p in ("float", "qat")},
        "epochs_planned": {"float": cfg["epochs_float"], "qat": cfg["epochs_qat"]},
        "best_test_acc": ckpt["best_acc"],
        "history": history,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
    }
    if cfg.get("init_from"):
        record["init_run"] = _source_run(Path(cfg["init_from"]))
    if cfg.get("resume_from"):
        record["resume_run"] = _source_run(Path(cfg["resume_from"]))
    dest.mkdir(parents=True, exist_ok=True)
    record["float_weights"] = _export_float(out, dest / f"{name}.pt", ckpt, history, cfg.get("resume_from"))
    qgraphs = [out / "qat.qgraph.json", out / "best-qat.qgraph.json"]
    qat_src = next((q for q in qgraphs if q.is_file()), None)
    if qat_src is not None:
        shutil.copyfile(qat_src, dest / f"{name}.qgraph.json")
        record["qat_qgraph"] = (f"{qat_src.name} of the run: "
                                + ("final QAT epoch" if qat_src == qgraphs[0] else "best QAT epoch so far"))
    shutil.copyfile(last, dest / f"{name}.ckpt")
    tmp = dest / f"{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(dest / f"{name}.json")
    return record


def _export_float(out: Path, dest: Path, ckpt: dict, history: list[dict], resume_from: str | None) -> str:
    floats = [r for r in history if r["phase"] == "float"]
    if ckpt.get("float_model") is not None and not floats and resume_from:
        save_atomic(ckpt["float_model"], dest)
        return f"the float weights this run started from (--resume-from {resume_from}; see resume_run)"
    if ckpt.get("float_model") is not None:
        save_atomic(ckpt["float_model"], dest)
        acc = floats[-1]["test_acc"] if floats else None
        return f"final float epoch ({len(floats)} epochs), test acc {acc}"
    best = out / "best-float.pt"
    if not best.is_file():
        raise TrainError(f"{out} has no float weights yet (best-float.pt)")
    shutil.copyfile(best, dest)
    top = max(floats, key=lambda r: r["test_acc"])
    return (f"best float epoch so far ({top['epoch']} of {top['epochs']}, training unfinished), "
            f"test acc {top['test_acc']}")


def _source_run(init: Path, depth: int = 0) -> dict:
    """Provenance of ``--init-from``/``--resume-from`` weights: the record of the run whose folder holds
    them (its ``last.ckpt``), if any."""
    sibling = init.parent / LAST
    soup = init.parent / "soup.json"
    if not sibling.is_file() and soup.is_file() and depth < 4:  # a weight average: its members' runs
        rec = json.loads(soup.read_text())
        return {"weights": str(init), "command": rec.get("command", ""),
                "soup": [_source_run(Path(m), depth + 1) for m in rec.get("members", [])]}
    driver = init.parent / "summary.json"
    if not sibling.is_file() and driver.is_file():  # <run>.float.pt of scripts/gpu_float_runs.py
        summary = json.loads(driver.read_text())
        run = summary.get("runs", {}).get(init.name.split(".")[0])
        if run and "command" in run:
            return {"weights": str(init), "command": run["command"], "device": summary.get("device"),
                    "history": run.get("history", []), "best_test_acc": {"float": run.get("final_test_acc")}}
    if not sibling.is_file():
        return {"weights": str(init), "run": "unknown (no last.ckpt beside the weights)"}
    ckpt = load_checkpoint(sibling)
    cfg = ckpt["config"]
    run = {"weights": str(init), "command": command_from_config(cfg), "history": ckpt["history"],
           "best_test_acc": ckpt["best_acc"]}
    for key, field in (("init_from", "init_run"), ("resume_from", "resume_run")):
        if cfg.get(key) and depth < 4:  # that run's own source, and so on
            run[field] = _source_run(Path(cfg[key]), depth + 1)
    return run
