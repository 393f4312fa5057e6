"""``imcflow train MODEL --data DIR --out DIR``: float pre-training then 4-b QAT, resumable."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser("train", help="train a zoo model (float, then quantisation-aware), or QAT of an "
                                            "ONNX network; on CIFAR-10 or your own .npy images; resumable",
                              description=__doc__.splitlines()[0])
    p.add_argument("model", help="zoo model name, e.g. cifar10-cnn11, or an .onnx float image classifier of any "
                                 "(C, H, W) input and class count (pixel / 255 inputs; QAT only: --epochs-float 0 "
                                 "--epochs-qat N)")
    p.add_argument("--data", help="CIFAR-10 folder (train.tar.gz/test.tar.gz or python batches), or a folder of "
                                  "train_x.npy, train_y.npy, test_x.npy, test_y.npy: uint8 images (N, H, W, C) or "
                                  "(N, C, H, W) (the layout that fits the model's input shape; refused when both "
                                  "fit) and integer labels (N,) in [0, classes); needed to train")
    p.add_argument("--out", required=True, help="run folder; an existing last.ckpt there is resumed")
    p.add_argument("--epochs-float", type=int, default=30, help="float pre-training epochs (default 30)")
    p.add_argument("--epochs-qat", type=int, default=0, help="quantisation-aware epochs after the float phase")
    p.add_argument("--augment", choices=("crop-flip", "crop", "none"), default="crop-flip",
                   help="training augmentation: random crop of the zero-padded image (1/8 of the side, 4 px for "
                        "32x32) and horizontal flip (default, as for CIFAR-10); 'crop' without the flip, for "
                        "digits, text and signs, which a mirror changes (MNIST, SVHN, GTSRB); 'none'")
    p.add_argument("--cutout", type=int, default=0, metavar="PX",
                   help="Cutout augmentation: zero a PX x PX square of each training image (default 0: off)")
    p.add_argument("--adc-full-scale", choices=("calibrated", "rows"), default="calibrated",
                   help="QAT: per-layer ADC full scale from the calibration images (default) or the layer's rows")
    p.add_argument("--qat-ideal-epochs", type=int, default=0,
                   help="the first N QAT epochs use the ideal ADC (several times faster on a CPU); the rest the chip's")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1, help="peak one-cycle learning rate, float phase (default 0.1)")
    p.add_argument("--lr-qat", type=float, default=0.001, help="initial cosine learning rate, QAT phase (default 0.001)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--swa", action="store_true",
                   help="float phase: stochastic weight averaging at the constant --lr (the result is the mean of "
                        "the weights after every epoch, batch norms re-estimated); use with --init-from")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in the float phase (fast on AVX512-BF16)")
    p.add_argument("--limit-train", type=int, default=None, help="train on N images only (smoke tests)")
    p.add_argument("--limit-test", type=int, default=None, help="evaluate on N test images only (smoke tests)")
    p.add_argument("--cache-dir", default=None, help="decoded-data cache (default $IMCFLOW_CACHE or ~/.cache/imcflow)")
    p.add_argument("--resume-from", default=None,
                   help="start a new --out from this checkpoint, or from float weights (then only QAT runs)")
    p.add_argument("--init-from", default=None,
                   help="float phase starts from these weights with a fresh schedule (continue an earlier float run)")
    p.add_argument("--chip", default="jssc2022", help="chip preset whose ADC the QAT phase models")
    p.add_argument("--distill-from", nargs="+", default=(), metavar="PT",
                   help="knowledge distillation: float weights of teacher networks whose averaged softened "
                        "predictions join the loss, in both phases; PT is a state_dict of the same model, "
                        "or ZOO_NAME=PT for a teacher of another zoo topology with the same input")
    p.add_argument("--distill-weight", type=float, default=0.5,
                   help="share of the distillation term in the loss (default 0.5)")
    p.add_argument("--distill-temp", type=float, default=4.0, help="distillation temperature (default 4)")
    p.add_argument("--progress-every", type=int, default=0, metavar="N", help="print a line every N batches")
    p.add_argument("--export", action="store_true",
                   help="after training, copy the run's weights, checkpoint and a JSON record to --weights-dir")
    p.add_argument("--export-only", action="store_true",
                   help="do not train: only export the run in --out as it stands (e.g. while it trains)")
    p.add_argument("--weights-dir", default=None, help="export target (default: the package's models/weights/)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train, printing one line per epoch; the run folder receives checkpoints and result.json."""
    import torch

    from imcflow.train import TrainConfig, TrainError, train
    from imcflow.train.loop import is_onnx_model

    if (args.export or args.export_only) and is_onnx_model(args.model):
        raise TrainError("--export ships a zoo model's weights; an ONNX network's result is the run folder's "
                         "qat.qgraph.json: give that to imcflow eval, run or compile")
    if args.export_only:
        return _export(args)
    if not args.data:
        raise TrainError("imcflow train needs --data DIR (the CIFAR-10 folder, or a folder of train_x.npy, "
                         "train_y.npy, test_x.npy, test_y.npy) unless --export-only is given")
    if args.threads is not None:
        if args.threads < 1:
            raise TrainError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(
        data_root=args.data, out_dir=args.out, model=args.model, epochs_float=args.epochs_float,
        epochs_qat=args.epochs_qat, qat_ideal_epochs=args.qat_ideal_epochs, batch_size=args.batch_size,
        lr_float=args.lr, lr_qat=args.lr_qat,
        seed=args.seed, limit_train=args.limit_train, limit_test=args.limit_test, cache_dir=args.cache_dir,
        resume_from=args.resume_from, init_from=args.init_from, device=args.device, bf16=args.bf16, swa=args.swa, chip=args.chip,
        adc_full_scale=args.adc_full_scale, augment=args.augment, cutout_px=args.cutout, distill_from=tuple(args.distill_from),
        distill_weight=args.distill_weight, distill_temp=args.distill_temp)
    print(f"imcflow train {args.model}: out={args.out} threads={torch.get_num_threads()} "
          f"epochs float={cfg.epochs_float} qat={cfg.epochs_qat} batch={cfg.batch_size} seed={cfg.seed} "
          f"augment={cfg.augment}"
          + (f" teachers={len(cfg.distill_from)}" if cfg.distill_from else ""), flush=True)

    def on_epoch(r) -> None:
        print(f"{time.strftime('%H:%M:%S')} {r.phase} epoch {r.epoch}/{r.epochs}: loss {r.loss:.4f} train acc {100 * r.train_acc:.2f} % "
              f"test acc {100 * r.test_acc:.2f} % {r.images_per_s:.0f} img/s lr {r.lr:.4g} ({r.seconds:.0f} s)"
              + (f" [{r.adc} ADC]" if r.adc else ""),
              flush=True)

    def on_batch(phase, epoch, step, steps, loss) -> None:
        if args.progress_every and step % args.progress_every == 0:
            print(f"  {time.strftime('%H:%M:%S')} {phase} epoch {epoch} batch {step}/{steps} loss {loss:.4f}",
                  flush=True)

    t0 = time.time()
    result = train(cfg, on_epoch=on_epoch, on_batch=on_batch)
    summary = {"best_acc": result.best_acc, "epochs_run": len(result.history), "wall_s": round(time.time() - t0, 1)}
    print("done: best test acc " + ", ".join(f"{k} {100 * v:.2f} %" for k, v in result.best_acc.items()), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "result.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    return _export(args) if args.export else 0


def _export(args: argparse.Namespace) -> int:
    from imcflow.models.cnn11 import WEIGHTS_DIR
    from imcflow.train.export import export_run

    dest = args.weights_dir or WEIGHTS_DIR
    record = export_run(args.out, dest, threads=args.threads)
    print(f"exported {args.out} to {dest}: {record['float_weights']}; best {record['best_test_acc']}", flush=True)
    return 0
