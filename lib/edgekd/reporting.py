"""Figures and tables shared by the notebooks and the paper (no pyplot state; Figures are returned)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgekd import data as D
from edgekd import evaluation as E
from edgekd import info
from edgekd import metrics as M
from edgekd.files import clear_results


def montage(arrays: D.DermaArrays, per_class: int = 6, split: str = "train", seed: int = 0) -> Figure:
    """A grid of ``per_class`` random images of each class from ``split``."""
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(per_class * 1.1, info.NUM_CLASSES * 1.15))
    axes = fig.subplots(info.NUM_CLASSES, per_class, squeeze=False)
    for c, name in enumerate(info.CLASS_NAMES):
        idx = np.flatnonzero(arrays.labels[split] == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(pick):
                ax.imshow(arrays.images[split][pick[j]])
        axes[c][0].set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle(f"DermaMNIST {split} images at {arrays.size} px")
    fig.tight_layout()
    return fig


def data_summary(cfg: D.DataConfig, arrays: D.DermaArrays, out_dir: Path) -> dict:
    """Counts, leakage report (when lesion ids are known) and a montage, written to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = arrays.counts()
    counts["total"] = counts.sum(axis=1)
    counts.to_csv(out_dir / "counts.csv", index_label="split")
    result: dict = {"counts": counts}
    if arrays.lesion_ids:
        leakage = D.leakage_report(D.split_table(arrays))
        leakage.to_csv(out_dir / "leakage.csv", index=False)
        result["leakage"] = leakage
    fig = montage(arrays)
    fig.savefig(out_dir / "montage.png", dpi=110)
    result["montage"] = fig
    return result


# ----------------------------------------------------------------------------- aggregate stage

HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "auc")


def discover(profile_dir: Path) -> pd.DataFrame:
    """Evaluated runs of a profile: run_id, role, arch, kd, seed, model, path."""
    rows = []
    for cfg_path in sorted(Path(profile_dir).glob("*/run_config.json")):
        run = cfg_path.parent
        if not (run / "eval" / "metrics.csv").exists():  # only evaluated runs are aggregated
            continue
        cfg = json.loads(cfg_path.read_text())
        role = "teacher" if run.name.startswith("teacher-") else "student"
        kd = run.name.split("-")[-2] if role == "student" else "teacher"
        rows.append({"run_id": run.name, "role": role, "arch": cfg["arch"], "kd": kd, "seed": cfg["seed"],
                     "model": E.model_name(run.name), "path": run})
    if not rows:
        raise FileNotFoundError(f"no evaluated runs under {profile_dir} (run the evaluate stage first)")
    return pd.DataFrame(rows)


def fmt_ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``mean [low, high]``; the interval is omitted where it is undefined (one seed)."""
    if not np.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def performance_table(seed_metrics: pd.DataFrame) -> pd.DataFrame:
    """Models x headline metrics: mean [t-interval across seeds], and the mean bootstrap interval."""
    rows = []
    for model, g in seed_metrics.groupby("model", sort=False):
        g = g.set_index("metric")
        row = {"model": model, "seeds": int(g["n_seeds"].iloc[0])}
        for m in HEADLINE_METRICS:
            r = g.loc[m]
            row[m] = fmt_ci(r["mean"], r["ci_low"], r["ci_high"])
        r = g.loc["macro_f1"]
        row["macro_f1 bootstrap (mean of runs)"] = f"[{r['boot_ci_low_mean']:.3f}, {r['boot_ci_high_mean']:.3f}]"
        rows.append(row)
    return pd.DataFrame(rows)


def kd_vs_nokd(runs: pd.DataFrame, baseline: str = "nokd") -> pd.DataFrame:
    """Per student arch and KD setting: test accuracy / macro-F1 minus the no-KD baseline of the same seed."""
    rows = []
    students = runs[runs["role"] == "student"]
    for arch, g in students.groupby("arch", sort=False):
        base = {r.seed: _eval_metrics(r.path) for r in g[g["kd"] == baseline].itertuples()}
        for kd, gk in g[g["kd"] != baseline].groupby("kd", sort=False):
            deltas = {m: [] for m in ("accuracy", "macro_f1")}
            for r in gk.itertuples():
                if r.seed in base:
                    mine = _eval_metrics(r.path)
                    for m in deltas:
                        deltas[m].append(mine[m] - base[r.seed][m])
            if not deltas["accuracy"]:
                continue
            row = {"arch": arch, "kd": kd, "paired_seeds": len(deltas["accuracy"])}
            for m, values in deltas.items():
                s = M.seed_summary(values)
                row[f"delta_{m}"] = fmt_ci(s["mean"], s["ci_low"], s["ci_high"])
                row[f"delta_{m}_mean"] = s["mean"]
            rows.append(row)
    return pd.DataFrame(rows)


def _eval_metrics(run: Path) -> dict[str, float]:
    df = pd.read_csv(Path(run) / "eval" / "metrics.csv")
    return dict(zip(df["metric"], df["value"], strict=True))


def ablation_table(runs: pd.DataFrame, seed_metrics: pd.DataFrame) -> pd.DataFrame:
    """Student arch x KD setting (with its alpha, T, beta): accuracy and macro-F1 across seeds."""
    rows = []
    students = runs[runs["role"] == "student"].drop_duplicates("model")
    for r in students.itertuples():
        kd = json.loads((r.path / "run_config.json").read_text())["kd"]
        g = seed_metrics[seed_metrics["model"] == r.model].set_index("metric")
        hinton = kd["mode"] == "hinton"
        rows.append({
            "arch": r.arch, "kd": r.kd, "alpha": kd["alpha"] if hinton else None,
            "T": kd["temperature"] if hinton else None, "beta": kd["beta"] if hinton else None,
            **{m: fmt_ci(*g.loc[m, ["mean", "ci_low", "ci_high"]]) for m in ("accuracy", "macro_f1")},
        })
    return pd.DataFrame(rows)


def calibration_summary(seed_cal: pd.DataFrame) -> pd.DataFrame:
    """Models x (stage, NLL / Brier / ECE / adaptive ECE / MCE / T) means across seeds."""
    keep = seed_cal[seed_cal["metric"].isin(["nll", "brier", "ece", "ece_adaptive", "mce", "temperature"])]
    table = keep.pivot_table(index=["model", "stage"], columns="metric", values="mean", sort=False).reset_index()
    return table


def operating_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Test-set operating points (fitted on val) averaged across seeds per model and rule."""
    frames = []
    for r in runs.itertuples():
        df = pd.read_csv(r.path / "eval" / "operating_points.csv")
        frames.append(df[df["split"] == "test"].assign(model=r.model))
    cols = ["accuracy", "balanced_accuracy", "macro_f1", "mel_sensitivity", "mel_specificity", "changed_fraction"]
    return pd.concat(frames).groupby(["model", "rule"], sort=False)[cols].mean().reset_index()


def per_class_delta_figure(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure]:
    """Mean per-class ΔF1 (student − teacher) across seeds, one bar group per class."""
    frames = [pd.read_csv(r.path / "eval" / "teacher_vs_student.csv").assign(model=r.model)
              for r in runs[runs["role"] == "student"].itertuples()
              if (r.path / "eval" / "teacher_vs_student.csv").exists()]
    table = pd.concat(frames).groupby(["model", "class"], sort=False)[["delta_f1", "delta_recall", "rel_gap"]].mean().reset_index()
    models = list(dict.fromkeys(table["model"]))
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    x = np.arange(info.NUM_CLASSES)
    for i, model in enumerate(models):
        d = table[table["model"] == model].set_index("class").reindex(info.CLASS_NAMES)
        ax.bar(x + i * width - 0.4 + width / 2, d["delta_f1"], width, label=model)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, info.CLASS_NAMES)
    ax.set_ylabel("ΔF1 (student − teacher)")
    ax.legend(fontsize=7, ncol=2)
    return table, fig


def training_curves_figure(runs: pd.DataFrame) -> Figure:
    """Val macro-F1 per epoch, mean across seeds, one line per model."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    for model, g in runs.groupby("model", sort=False):
        hist = pd.concat(pd.read_csv(p / "history.csv") for p in g["path"]).groupby("epoch").mean(numeric_only=True)
        ax1.plot(hist.index, hist["train_loss"], marker=".", label=model)
        ax2.plot(hist.index, hist["val_macro_f1"], marker=".", label=model)
    ax1.set(xlabel="epoch", ylabel="train loss (mean over seeds)")
    ax2.set(xlabel="epoch", ylabel="val macro-F1 (mean over seeds)")
    ax2.legend(fontsize=7, ncol=2)
    return fig


def reliability_grid(runs: pd.DataFrame) -> Figure:
    """Reliability curves (first seed of each model), before and after temperature scaling."""
    first = runs.sort_values("seed").drop_duplicates("model")
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for r in first.itertuples():
        rel = pd.read_csv(r.path / "eval" / "reliability.csv")
        for ax, stage in zip(axes, ("before", "after"), strict=True):
            d = rel[(rel["stage"] == stage) & (rel["count"] > 0)]
            ax.plot(d["confidence"], d["accuracy"], marker=".", label=r.model)
    for ax, stage in zip(axes, ("before", "after"), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set(xlabel="confidence", title=f"{stage} temperature scaling", xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=7)
    return fig


def attention_panels(runs: pd.DataFrame, n_images: int = 4, stage: int = 1) -> Figure:
    """Spatial attention ``mean_c(A^2)`` at an AT stage: teacher beside each student (first seed), on test images."""
    import torch

    from edgekd.inference import load_run
    from edgekd.losses import attention_map
    from edgekd.models import forward_with_stages

    first = runs.sort_values(["role", "seed"], ascending=[False, True]).drop_duplicates("model")
    cfg = json.loads((first["path"].iloc[0] / "run_config.json").read_text())
    arrays = D.load(D.DataConfig(**cfg["data"]))
    y = arrays.labels["test"]
    pick = [int(np.flatnonzero(y == c)[0]) for c in (info.MELANOMA, 5, 1, 2) if (y == c).any()][:n_images]
    images = arrays.images["test"][pick]
    x = D.normalise(images)
    fig = Figure(figsize=(1.6 * (len(first) + 1), 1.7 * len(pick)), layout="constrained")
    axes = fig.subplots(len(pick), len(first) + 1, squeeze=False)
    for i, img in enumerate(images):
        axes[i][0].imshow(img)
        axes[i][0].set_ylabel(info.CLASS_NAMES[y[pick[i]]])
    for j, r in enumerate(first.itertuples(), start=1):
        model = load_run(r.path).model
        with torch.no_grad():
            _, feats = forward_with_stages(model, x, (stage,))
        side = feats[0].shape[-1]
        maps = attention_map(feats[0]).view(-1, side, side).numpy()
        for i in range(len(pick)):
            axes[i][j].imshow(images[i])
            axes[i][j].imshow(maps[i], cmap="jet", alpha=0.45, extent=(0, images.shape[2], images.shape[1], 0),
                              interpolation="bilinear")
        axes[0][j].set_title(r.model.replace("student-", "").replace("teacher-", "T: "), fontsize=7)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def robustness_summary(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure] | None:
    """Per model and suite: accuracy vs severity level averaged over corruptions and seeds."""
    frames = [pd.read_csv(r.path / "robustness" / "corruptions.csv").assign(model=r.model)
              for r in runs.itertuples() if (r.path / "robustness" / "corruptions.csv").exists()]
    if not frames:
        return None
    df = pd.concat(frames)
    level = "level" if "level" in df.columns else "severity"
    curves = df.groupby(["suite", "model", level], sort=False)[["accuracy", "macro_f1", "balanced_error"]].mean().reset_index()
    suites = list(dict.fromkeys(curves["suite"]))
    fig = Figure(figsize=(5 * len(suites), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(suites)))
    for ax, suite in zip(axes, suites, strict=True):
        for model, g in curves[curves["suite"] == suite].groupby("model", sort=False):
            ax.plot(g[level], g["accuracy"], marker="o", label=model)
        ax.set(title=f"{suite} suite", xlabel="severity level (0 = clean)", ylabel="accuracy")
    axes[-1].legend(fontsize=7)
    corrupted = df[df[level] > 0]
    table = corrupted.groupby(["model", "suite"], sort=False)[["accuracy", "macro_f1", "balanced_error"]].mean().reset_index()
    clean = df[df[level] == 0].groupby(["model", "suite"], sort=False)["accuracy"].mean().rename("clean_accuracy")
    return table.join(clean, on=["model", "suite"]), fig


def be_rbe_summary(runs: pd.DataFrame) -> pd.DataFrame | None:
    """MedMNIST-C balanced error, BE and rBE (the ``mean`` row of each run) averaged across seeds per model.

    The ``note`` column says which corruptions the mean covers (some need larger images).
    """
    frames = []
    for r in runs.itertuples():
        path = r.path / "robustness" / "medmnistc_be_rbe.csv"
        if path.exists():
            df = pd.read_csv(path)
            mean = df[df["corruption"] == "mean"]
            missing = {"balanced_error", "be", "rbe"} - set(df.columns)
            if len(mean) != 1 or missing:
                raise ValueError(f"{path} needs one 'mean' row and columns balanced_error, be, rbe (missing {sorted(missing)})")
            frames.append(mean.assign(model=r.model))
    if not frames:
        return None
    df = pd.concat(frames)
    table = df.groupby("model", sort=False).agg(
        seeds=("be", "size"), balanced_error=("balanced_error", "mean"), BE=("be", "mean"), rBE=("rbe", "mean"),
        note=("note", "first"))
    return table.reset_index()


def efficiency_summary(runs: pd.DataFrame) -> dict[str, pd.DataFrame | Figure] | None:
    """Model cost, latency (batch 1, trained size, CPU), backend accuracy and the Pareto front."""
    have = [r for r in runs.itertuples() if (r.path / "efficiency" / "model.csv").exists()]
    if not have:
        return None
    model = pd.concat(pd.read_csv(r.path / "efficiency" / "model.csv").assign(model=r.model) for r in have)
    backends = pd.concat(pd.read_csv(r.path / "efficiency" / "backends.csv").assign(model=r.model) for r in have)
    lat = [pd.read_csv(r.path / "efficiency" / "latency.csv").assign(model=r.model)
           for r in have if (r.path / "efficiency" / "latency.csv").exists()]
    acc = backends.groupby(["model", "backend"], sort=False)[
        ["accuracy", "macro_f1", "delta_macro_f1_vs_eager", "max_abs_logit_diff_vs_eager"]].mean().reset_index()
    first = model.drop_duplicates("model").set_index("model")
    table = first[["arch", "params", "macs", "flops", "state_dict_bytes", "torchscript_bytes", "onnx_bytes",
                   "onnx_int8_bytes", "peak_cpu_rss_mb"]].copy()
    for col in [c for c in table.columns if c.endswith("_bytes")]:
        table[col.replace("_bytes", "_MB")] = table.pop(col) / 2**20
    table["params_M"] = table.pop("params") / 1e6
    table["MMACs"] = table.pop("macs") / 1e6
    table.pop("flops")
    result: dict = {"efficiency": table.reset_index(), "backends": acc}
    if lat:
        lat = pd.concat(lat)
        b1 = lat[(lat["device"] == "cpu") & (lat["batch"] == 1) & (lat["size"] == lat["img_size"])]
        pivot = b1.pivot_table(index="model", columns="backend", values="p50_ms", sort=False)
        result["efficiency"] = result["efficiency"].join(pivot.add_prefix("p50_ms_"), on="model")
        result["latency"] = lat
        pts = b1.merge(acc, on=["model", "backend"])[["model", "backend", "p50_ms", "p90_ms", "p99_ms", "macro_f1",
                                                         "accuracy", "file_bytes"]]
        pts = pts.sort_values(["p50_ms", "macro_f1"], ascending=[True, False]).reset_index(drop=True)
        pts["pareto"] = pts["macro_f1"] > pts["macro_f1"].cummax().shift(fill_value=-np.inf)
        result["pareto"] = pts
        result["pareto_fig"] = pareto_figure(pts)
    return result


def pareto_figure(pts: pd.DataFrame) -> Figure:
    """Macro-F1 vs CPU p50 latency; bubble area ∝ file size; the Pareto front is joined."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = dict(zip(["eager", "torchscript", "ort_fp32", "ort_int8"], "osD^", strict=True))
    colours = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(pts["model"]))}
    area = 20 + 400 * pts["file_bytes"] / pts["file_bytes"].max()
    for (model, backend), g in pts.groupby(["model", "backend"], sort=False):
        ax.scatter(g["p50_ms"], g["macro_f1"], s=area[g.index], marker=markers.get(backend, "o"),
                   color=colours[model], alpha=0.6, edgecolor="black", linewidth=0.5)
    front = pts[pts["pareto"]]
    ax.plot(front["p50_ms"], front["macro_f1"], color="black", lw=1, ls="--", label="Pareto front")
    for model, c in colours.items():
        ax.scatter([], [], color=c, label=model)
    for backend, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=backend)
    ax.set_xscale("log")
    ax.set(xlabel="CPU latency p50, batch 1 (ms, log scale)", ylabel="test macro-F1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _save(obj: pd.DataFrame | Figure, out_dir: Path, name: str) -> None:
    if isinstance(obj, Figure):
        obj.savefig(out_dir / f"{name}.png", dpi=120)
    else:
        obj.to_csv(out_dir / f"{name}.csv", index=False)


def aggregate(profile_dir: Path, out_dir: Path) -> dict:
    """Paper-ready tables and figures for every finished run of a profile, written to ``out_dir``."""
    import shutil
    import time

    profile_dir, out_dir = Path(profile_dir), Path(out_dir)
    runs = discover(profile_dir)
    clear_results(out_dir)
    seed_metrics = E.seed_table(profile_dir, "metrics")
    seed_cal = E.seed_table(profile_dir, "calibration")
    res: dict = {
        "performance": performance_table(seed_metrics),
        "seed_metrics": seed_metrics,
        "ablation": ablation_table(runs, seed_metrics),
        "calibration": calibration_summary(seed_cal),
        "operating_points": operating_summary(runs),
        "reliability": reliability_grid(runs),
        "training_curves": training_curves_figure(runs),
        "attention": attention_panels(runs),
    }
    kd = kd_vs_nokd(runs)
    if len(kd):
        res["kd_vs_nokd"] = kd
    if any((r.path / "eval" / "paired.csv").exists() for r in runs.itertuples()):
        res["per_class_delta"], res["per_class_delta_fig"] = per_class_delta_figure(runs)
        res["paired"] = pd.concat(
            pd.read_csv(r.path / "eval" / "paired.csv").assign(model=r.model)
            for r in runs.itertuples() if (r.path / "eval" / "paired.csv").exists()
        ).groupby("model", sort=False)[["agreement", "b", "c", "p_value", "teacher_accuracy", "student_accuracy"]].mean().reset_index()
    rob = robustness_summary(runs)
    if rob is not None:
        res["robustness"], res["corruption_curves"] = rob
    be = be_rbe_summary(runs)
    if be is not None:
        res["be_rbe"] = be
    eff = efficiency_summary(runs)
    if eff is not None:
        res.update({k if k != "pareto_fig" else "pareto_png": v for k, v in eff.items()})
    data_dir = profile_dir / "data"
    for name in ("counts.csv", "leakage.csv", "montage.png"):
        if (data_dir / name).exists():
            shutil.copy(data_dir / name, out_dir / ("data_counts.csv" if name == "counts.csv" else name))
    for name, obj in res.items():
        _save(obj, out_dir, name.replace("_png", "").replace("_fig", ""))
    res["numbers"] = headline_numbers(runs, seed_metrics, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    (out_dir / "numbers.json").write_text(json.dumps(res["numbers"], indent=2))
    return res


def headline_numbers(runs: pd.DataFrame, seed_metrics: pd.DataFrame, generated: str) -> dict:
    """Numbers the manuscript quotes in its text (all computed, none typed)."""
    acc = seed_metrics[seed_metrics["metric"] == "accuracy"].set_index("model")["mean"]
    f1 = seed_metrics[seed_metrics["metric"] == "macro_f1"].set_index("model")["mean"]
    students = [m for m in acc.index if m.startswith("student-")]
    teacher = next((m for m in acc.index if m.startswith("teacher-")), None)
    best = max(students, key=lambda m: acc[m]) if students else teacher
    cfg = {r.role: json.loads((r.path / "run_config.json").read_text()) for r in runs.itertuples()}
    any_cfg = next(iter(cfg.values()))
    return {
        "generated": generated,
        "size": int(any_cfg["data"]["size"]),
        "n_runs": len(runs),
        "n_seeds": int(runs.groupby("model")["seed"].nunique().max()),
        "teacher_epochs": int(cfg["teacher"]["train"]["epochs"]) if "teacher" in cfg else None,
        "student_epochs": int(cfg["student"]["train"]["epochs"]) if "student" in cfg else None,
        "best_student": best,
        "best_student_accuracy": float(acc[best]),
        "best_student_macro_f1": float(f1[best]),
        "teacher_accuracy": float(acc[teacher]) if teacher else None,
        "teacher_macro_f1": float(f1[teacher]) if teacher else None,
    }
