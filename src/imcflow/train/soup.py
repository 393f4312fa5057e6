"""Weight averaging ("model soup", Wortsman et al. 2022): the uniform mean of several float
state_dicts of one network, e.g. the final weights of consecutive warm restarts, which sit in one
basin of the loss. Every floating-point tensor is averaged, batch-norm running statistics
included; integer buffers (``num_batches_tracked``) are taken from the first.

    python -m imcflow.train.soup --out runs/soup/float.pt runs/a/float.pt runs/b/float.pt

The result is a bare state_dict, which ``imcflow train --resume-from`` takes for QAT; ``soup.json``
beside it records the command and the members, and ``imcflow train --export`` embeds the members'
own run records in the shipped record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from imcflow.train.checkpoint import TrainError, save_atomic

RECORD = "soup.json"
"""Written beside the averaged weights: the command and the member weights (export follows it)."""


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Uniform mean of ``state_dicts`` (same keys and shapes); TrainError naming a mismatch."""
    if not state_dicts:
        raise TrainError("nothing to average: give at least one state_dict")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], 1):
        if sd.keys() != first.keys():
            raise TrainError(f"state_dict {i} has other keys than state_dict 0 "
                             f"({sorted(set(sd) ^ set(first))[:3]}...): average weights of one network only")
        for k, v in sd.items():
            if v.shape != first[k].shape:
                raise TrainError(f"state_dict {i}: {k} has shape {tuple(v.shape)}, state_dict 0 "
                                 f"{tuple(first[k].shape)}: average weights of one network only")
    out = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = (torch.stack([sd[k].double() for sd in state_dicts]).mean(0)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TrainError(f"{path}: no such weights file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TrainError(f"{path}: not a state_dict (or a checkpoint holding one under 'model')")
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m imcflow.train.soup", description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+", type=Path, help="state_dicts (.pt) to average")
    ap.add_argument("--out", required=True, type=Path, help="where to write the averaged state_dict")
    args = ap.parse_args(argv)
    try:
        avg = average_state_dicts([_load(p) for p in args.weights])
    except TrainError as exc:
        print(f"imcflow.train.soup: error: {exc}", file=sys.stderr)
        return 2
    save_atomic(avg, args.out)
    record = {"command": "python -m imcflow.train.soup --out " + " ".join(map(str, [args.out, *args.weights])),
              "weights": str(args.out), "members": [str(p) for p in args.weights]}
    (args.out.parent / RECORD).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}: mean of {len(args.weights)} state_dicts ({', '.join(map(str, args.weights))})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
