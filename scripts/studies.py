"""The two development studies behind the default recipe, trained once (seed 0, 64 px) and scored on VALIDATION.

* ``teacher_levers.csv``: each lever is one change to the recipe, scored with one view and with the
  eight dihedral views averaged (test-time augmentation). ResNet-18 is the cheap proxy for the recipe
  levers; the ResNet-50 row is the teacher itself.
* ``collapse_diagnosis.csv``: MobileNetV2 and EfficientNet-B0 with timm's classifier initialisation
  against a small one (weight std 0.01), and at a lower learning rate, 6 epochs each; with the
  validation macro-F1 under eval-mode BatchNorm, under batch statistics, and after re-estimating the
  running statistics on the training images (to test whether eval-mode BatchNorm causes the collapse).

Every run uses ``edgekd.stages.train.run_train`` (the pipeline's own code). Decisions were taken on these
validation numbers, never on test.

    .venv/bin/python scripts/studies.py --runs outputs/studies --out paper/results/studies

Finished variants (``metrics.json`` present) are not trained again; the tables are rebuilt from their folders.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from edgekd.core import augment as AU
from edgekd.core import metrics as M
from edgekd.core import provenance
from edgekd.core.inference import load_run, predict
from edgekd.pipeline import publish
from edgekd.stages import data as D
from edgekd.stages import train as T

#: The recipe every lever changes one thing of (the default profile's student recipe at 64 px).
#: What this script writes into ``--out`` (the studies' own tables); a folder holding any other file is refused.
WRITES: tuple[str, ...] = ("teacher_levers.csv", "collapse_diagnosis.csv", "provenance.json")
BASE: dict = {"epochs": 12, "batch_size": 128, "lr": 3e-3, "weight_decay": 0.05, "warmup_epochs": 1,
              "augment": "dihedral", "stem_stride": 2, "cpu_amp": True, "progress": False, "collapse": "warn"}
#: name -> (arch, what changes, train overrides), the teacher-recipe levers
LEVERS: dict[str, tuple[str, str, dict]] = {
    "r18-12": ("resnet18", "baseline: 12 epochs, dihedral views", {}),
    "r18-12-lsema": ("resnet18", "label smoothing 0.1 + EMA of weights (0.99)", {"label_smoothing": 0.1, "ema": 0.99}),
    "r18-12-aug": ("resnet18", "random-resized crop (>= 35 % area) + colour jitter 0.2", {"crop_scale": 0.35, "jitter": 0.2}),
    "r18-12-cbw": ("resnet18", "class-balanced loss weights (effective number, beta 0.999)", {"balance": "weights"}),
    "t-r50-15": ("resnet50", "ResNet-50, 15 epochs", {"epochs": 15}),
}
#: name -> (arch, what changes, train overrides), the collapse diagnosis (6 epochs, fp32)
COLLAPSE: dict[str, tuple[str, str, dict]] = {
    "base-mobilenetv2_100": ("mobilenetv2_100", "timm classifier init (weight std 0.22), lr 3e-3", {}),
    "mb-head": ("mobilenetv2_100", "classifier weight std 0.01, lr 3e-3", {"head_init_std": 0.01}),
    "mb-lr1": ("mobilenetv2_100", "timm classifier init, lr 1e-3", {"lr": 1e-3}),
    "base-efficientnet_b0": ("efficientnet_b0", "timm classifier init (weight std 0.22), lr 3e-3", {}),
    "eb-head": ("efficientnet_b0", "classifier weight std 0.01, lr 3e-3", {"head_init_std": 0.01}),
    "eb-lr1": ("efficientnet_b0", "timm classifier init, lr 1e-3", {"lr": 1e-3}),
}


def score(run_dir: Path, arrays: D.DermaArrays) -> dict[str, float]:
    """Validation accuracy, balanced accuracy and macro-F1 with one view and averaged over the 8 dihedral views."""
    run = load_run(run_dir)
    y = arrays.labels["val"]
    out = {}
    for tag, views in (("", (0,)), ("_tta", tuple(range(8)))):
        pred = predict(run.model, arrays.images["val"], views=views)[0].argmax(1)
        out |= {f"val_accuracy{tag}": M.accuracy(y, pred), f"val_balanced_accuracy{tag}": M.balanced_accuracy(y, pred),
                f"val_macro_f1{tag}": M.macro_f1(y, pred)}
    return out


def batchnorm_check(run_dir: Path, arrays: D.DermaArrays) -> dict[str, float]:
    """Validation macro-F1 with eval-mode BatchNorm, with batch statistics, and after re-estimating the running
    statistics on the (unaugmented) training images: if eval-mode statistics caused a collapse, the last two differ."""
    model = load_run(run_dir).model
    y = arrays.labels["val"]
    out = {"val_macro_f1_eval_bn": M.macro_f1(y, predict(model, arrays.images["val"])[0].argmax(1))}
    model.train()
    with torch.no_grad():
        logits = torch.cat([model(AU.normalise(arrays.images["val"][i : i + 256])) for i in range(0, len(y), 256)])
    out["val_macro_f1_batch_bn"] = M.macro_f1(y, logits.argmax(1).numpy())
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the pass
    with torch.no_grad():
        for i in range(0, len(arrays.labels["train"]), 256):
            model(AU.normalise(arrays.images["train"][i : i + 256]))
    out["val_macro_f1_reestimated_bn"] = M.macro_f1(y, predict(model, arrays.images["val"])[0].argmax(1))
    return out


def study(runs: Path, variants: dict, base: dict, arrays: D.DermaArrays, data: D.DataConfig, threads: int | None,
          extra=None) -> pd.DataFrame:
    """Train the missing variants and tabulate all of them."""
    rows = []
    for name, (arch, change, overrides) in variants.items():
        run_dir = runs / name
        if not (run_dir / "metrics.json").exists():
            tick = time.time()
            T.run_train(run_dir, arch, 0, data, T.TrainConfig(**{**base, "threads": threads, **overrides}))
            print(f"{name}: trained in {time.time() - tick:.0f}s", flush=True)
        summary = json.loads((run_dir / "metrics.json").read_text())
        rows.append({"variant": name, "arch": arch, "change": change, "epochs": summary["epochs"],
                     "best_epoch": summary["best_epoch"], **score(run_dir, arrays),
                     **(extra(run_dir, arrays) if extra else {}), "train_time_s": summary["train_time_s"]})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of the study runs (created or reused)")
    ap.add_argument("--out", type=Path, required=True, help="folder for " + ", ".join(WRITES))
    ap.add_argument("--threads", type=int, default=None, help="torch threads for training")
    args = ap.parse_args(argv)
    if refusal := publish.foreign_files(args.out, WRITES):
        print(f"studies: error: {refusal}", file=sys.stderr)
        return 2
    data = D.DataConfig(size=64)
    arrays = D.load(data)
    args.out.mkdir(parents=True, exist_ok=True)
    tables = {
        "teacher_levers": study(args.runs, LEVERS, BASE, arrays, data, args.threads),
        "collapse_diagnosis": study(args.runs, COLLAPSE, {**BASE, "epochs": 6, "cpu_amp": False}, arrays, data,
                                    args.threads, batchnorm_check),
    }
    for name, table in tables.items():
        table.to_csv(args.out / f"{name}.csv", index=False)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    prov = {"script": "scripts/studies.py", "git": provenance.git_commit(), "machine": provenance.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": str(args.runs)}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
