"""The aggregate's figures (matplotlib Figures, no pyplot state; seaborn for the statistical plots): KD
against no KD, per-class F1, confusion matrices, training curves, reliability, external sets, the Pareto
front and Grad-CAM panels. Error bars are t-intervals across seeds, clipped to the metric's range."""

from __future__ import annotations

import json
import textwrap
import zlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from edgekd.core import augment as AU
from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core.inference import load_run
from edgekd.core.info import LESION_MARK
from edgekd.core.words import TEST_SET_NAMES
from edgekd.stages import data as D
from edgekd.stages.runs import eval_table, having

# ----------------------------------------------------------------------------- error bars across seeds


def t_interval(values: Sequence[float], bounds: tuple[float, float] = (-np.inf, np.inf)) -> tuple[float, float]:
    """The across-seed t-interval of ``values`` clipped to ``bounds`` (the mean twice for one value): a seaborn
    ``errorbar``."""
    s = M.seed_summary(values)
    if s["n"] < 2:
        return s["mean"], s["mean"]
    return max(s["ci_low"], bounds[0]), min(s["ci_high"], bounds[1])


def unit_interval(values: Sequence[float]) -> tuple[float, float]:
    """:func:`t_interval` clipped to [0, 1], for metrics bounded there."""
    return t_interval(values, (0.0, 1.0))


def delta_interval(values: Sequence[float]) -> tuple[float, float]:
    """:func:`t_interval` clipped to [−1, 1], for differences of metrics bounded in [0, 1]."""
    return t_interval(values, (-1.0, 1.0))


# ----------------------------------------------------------------------------- one colour per model


#: The order of the KD settings' words within an architecture's colour family (others follow, lighter).
SETTING_ORDER: tuple[str, ...] = ("no KD", "KD", "logit-standardised KD", "DKD", "DIST", "KD + attention transfer")


def model_colour(label: str) -> tuple[float, float, float]:
    """The colour of a model in every figure: teachers near-black; a student's architecture picks the hue
    (colour-blind palette, in :data:`info.ARCH_LABELS` order) and its KD setting the shade (no KD darkest), so that
    one model keeps one colour across figures and the students of one architecture read as one family."""
    name, _, words = label.partition(" · ")
    if not words:
        return (0.15, 0.15, 0.15)
    archs = list(info.ARCH_LABELS.values())
    hue = archs.index(name) if name in archs else zlib.crc32(name.encode()) % 10
    base = np.array(sns.color_palette("colorblind", 10)[hue])
    setting = words.split(" (")[0].split(", ")[0]
    shade = SETTING_ORDER.index(setting) if setting in SETTING_ORDER else len(SETTING_ORDER)
    colour = base * 0.6 if shade == 0 else base + (1 - base) * min(0.5, 0.12 * (shade - 1))
    return tuple(float(c) for c in colour)


#: A KD setting's line pattern (matplotlib dashes, "" solid), in :data:`SETTING_ORDER`: the shades of one architecture's
#: students are close, so the line tells the settings apart (colour-blind and greyscale readers included).
SETTING_DASHES: tuple[tuple[float, ...] | str, ...] = ("", (5, 2), (1, 1.5), (4, 1.5, 1, 1.5), (8, 2.5), (2, 2))


def model_dashes(label: str) -> tuple[float, ...] | str:
    """The line pattern of a model in every line figure: solid for the teacher and no KD, one pattern per KD setting."""
    _, _, words = label.partition(" · ")
    setting = words.split(" (")[0].split(", ")[0]
    return SETTING_DASHES[SETTING_ORDER.index(setting)] if setting in SETTING_ORDER else ""


def line_style(label: str) -> dict:
    """``ax.plot`` keywords for a model's line: its colour and, for a KD setting, its dashes."""
    dashes = model_dashes(label)
    return {"color": model_colour(label), **({"dashes": dashes} if dashes else {})}


def palette(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """:func:`model_colour` of each label, for seaborn's ``palette``."""
    return {label: model_colour(label) for label in dict.fromkeys(labels)}


# ----------------------------------------------------------------------------- KD, external sets, classes, curves


def paired_kd_figure(per_seed: pd.DataFrame) -> Figure:
    """Paired Δ (KD − no KD) per student and KD method (its name in words): mean with its t-interval across seeds,
    seeds as dots."""
    per_seed = per_seed.assign(setting=per_seed["method"]) if "method" in per_seed else per_seed
    hue_order = list(dict.fromkeys(per_seed["setting"]))
    fig = Figure(figsize=(9, 1.2 + 0.55 * per_seed["student"].nunique() * max(1, len(hue_order)) ** 0.5),
                 layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(1, 2, sharey=True)
    dodge = 0.8 * (1 - 1 / len(hue_order))  # the point ranges sit on the per-seed dots (stripplot's dodge)
    titles = {"d_macro_f1": "Δ macro-F1 (KD − no KD)", "d_balanced_accuracy": "Δ balanced accuracy (KD − no KD)"}
    for ax, (col, title) in zip(axes, titles.items(), strict=True):
        ax.axvline(0, color="black", lw=0.8)
        sns.stripplot(per_seed, x=col, y="student", hue="setting", hue_order=hue_order, dodge=True, ax=ax,
                      palette="colorblind", alpha=0.35, size=4, legend=False, jitter=False)
        sns.pointplot(per_seed, x=col, y="student", hue="setting", hue_order=hue_order, dodge=dodge, ax=ax,
                      palette="colorblind", errorbar=delta_interval, linestyle="none", markers="D", capsize=0.15,
                      err_kws={"linewidth": 1.4})
        ax.set(xlabel=title, ylabel="")
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), title="KD method", frameon=False)
    return fig


def external_gap_figure(per_seed: pd.DataFrame) -> Figure:
    """Macro-F1 per model on the in-distribution test set and each external set (mean, t-interval over seeds)."""
    fig = Figure(figsize=(8, 1.5 + 0.45 * per_seed["label"].nunique()), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    per_seed = per_seed.assign(test_set=per_seed["test_set"].map(lambda s: TEST_SET_NAMES.get(s, s)))
    sns.pointplot(per_seed, x="value", y="label", hue="test_set", errorbar=unit_interval, dodge=0.4, linestyle="none",
                  palette="colorblind", capsize=0.15, ax=ax)
    ax.set(xlabel="test macro-F1", ylabel="", xlim=(0, 1))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title="test set", frameon=False)
    return fig


def per_class_figure(runs: pd.DataFrame, models: list[str]) -> tuple[pd.DataFrame, Figure]:
    """Per-class test F1 of ``models``: bars are seed means, error bars the t-interval across seeds."""
    df = eval_table(runs[runs["model"].isin(models)], "per_class")
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    order = [runs[runs["model"] == m]["label"].iloc[0] for m in models]
    sns.barplot(df, x="class", y="f1", hue="label", hue_order=order, order=list(info.CLASS_NAMES),
                errorbar=unit_interval, capsize=0.1, palette=palette(order), err_kws={"linewidth": 1}, ax=ax)
    ax.set(xlabel="", ylabel="test F1", ylim=(0, 1))
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    table = df.groupby(["model", "label", "class"], sort=False)[["precision", "recall", "f1"]].mean().reset_index()
    return table, fig


def per_class_delta_figure(runs: pd.DataFrame) -> tuple[pd.DataFrame, Figure]:
    """Per-class ΔF1 (student − teacher) of each official-split student: seed means with t-interval bars, one panel
    per student architecture."""
    students = having(runs[(runs["role"] == "student") & (runs["split"] != LESION_MARK)], "eval/teacher_vs_student.csv")
    df = eval_table(students, "teacher_vs_student")
    archs = list(dict.fromkeys(students["arch"]))
    fig = Figure(figsize=(9, 2.4 * len(archs) + 0.4), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = np.atleast_1d(fig.subplots(len(archs), 1, sharex=True, sharey=True, squeeze=False)[:, 0])
    for ax, arch in zip(axes, archs, strict=True):
        d = df[df["arch"] == arch]
        sns.barplot(d, x="class", y="delta_f1", hue="label", order=list(info.CLASS_NAMES), errorbar=delta_interval,
                    capsize=0.1, palette=palette(d["label"]), err_kws={"linewidth": 1}, ax=ax)
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="", ylabel="ΔF1 (student − teacher)")
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    table = df.groupby(["model", "label", "class"], sort=False)[["delta_f1", "delta_recall"]].mean().reset_index()
    return table, fig


def confusion_figure(runs: pd.DataFrame, models: list[str]) -> Figure:
    """Row-normalised test confusion matrices (mean over seeds) of ``models`` as heatmaps."""
    fig = Figure(figsize=(4.2 * len(models), 3.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(models)))
    for ax, model in zip(axes, models, strict=True):
        g = runs[runs["model"] == model]
        cm = sum(pd.read_csv(p / "eval" / "confusion_normalised.csv", index_col=0) for p in g["path"]) / len(g)
        sns.heatmap(cm, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=False, square=True, ax=ax,
                    annot_kws={"fontsize": 7})
        ax.set(title=g["label"].iloc[0], xlabel="predicted", ylabel="true")
    return fig


def arch_rows(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The (role, arch) groups of ``runs`` in order, the teacher's first: one row of small multiples each, so that no
    panel holds more than one architecture's models (at most about 6 curves)."""
    rows = list(dict.fromkeys(zip(runs["role"], runs["arch"], strict=True)))
    return sorted(rows, key=lambda ra: ra[0] != "teacher")


def training_curves_figure(runs: pd.DataFrame) -> Figure:
    """Training cross-entropy and validation macro-F1 per epoch, one row of panels per architecture (the teacher's
    first): seed mean with a t-interval band, one line per model. The cross-entropy is the label term alone, the
    same quantity with and without KD (the KD term is left out: it is not comparable across losses)."""
    hist = pd.concat(pd.read_csv(r.path / "history.csv").assign(label=r.label, seed=r.seed, role=r.role, arch=r.arch)
                     for r in runs.itertuples())
    hist["loss"] = hist["train_ce"] if "train_ce" in hist else hist["train_loss"]
    rows = arch_rows(hist)
    fig = Figure(figsize=(10, 2.1 * len(rows) + 0.4), layout="constrained")
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(len(rows), 2, squeeze=False, sharex=True)
    for (role, arch), (ax1, ax2) in zip(rows, axes, strict=True):
        h = hist[(hist["role"] == role) & (hist["arch"] == arch)]
        colours = palette(h["label"])
        for ax, col, band in ((ax1, "loss", t_interval), (ax2, "val_macro_f1", unit_interval)):
            sns.lineplot(h, x="epoch", y=col, hue="label", style="label", dashes={k: model_dashes(k) for k in colours},
                         errorbar=band, markers=False, palette=colours, ax=ax, legend=ax is ax2)
            ax.set(xlabel="epoch", ylabel="")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        sns.move_legend(ax2, "upper left", bbox_to_anchor=(1.01, 1), title=None, frameon=False, fontsize=8)
    axes[0][0].set_title("training cross-entropy (mean over seeds)", fontsize=9)
    axes[0][1].set_title("validation macro-F1 (mean over seeds)", fontsize=9)
    return fig


def reliability_grid(runs: pd.DataFrame) -> Figure:
    """Reliability curves (first seed of each model), before and after temperature scaling: one row of panels per
    architecture, the teacher's first."""
    first = runs.sort_values("seed").drop_duplicates("model")
    rows = arch_rows(first)
    fig = Figure(figsize=(10, 2.6 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), 2, sharex=True, sharey=True, squeeze=False)
    for (role, arch), row in zip(rows, axes, strict=True):
        for r in first[(first["role"] == role) & (first["arch"] == arch)].itertuples():
            rel = pd.read_csv(r.path / "eval" / "reliability.csv")
            for ax, stage in zip(row, ("before", "after"), strict=True):
                d = rel[(rel["stage"] == stage) & (rel["count"] > 0)]
                ax.plot(d["confidence"], d["accuracy"], marker=".", label=r.label, **line_style(r.label))
        for ax in row:
            ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
            ax.set(xlim=(0, 1), ylim=(0, 1))
        row[0].set_ylabel("accuracy")
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    for ax, stage in zip(axes[0], ("before", "after"), strict=True):
        ax.set_title(f"{stage} temperature scaling", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    return fig


def corruption_curves_figure(curves: pd.DataFrame) -> Figure:
    """Balanced accuracy against corruption severity (means over each suite's corruptions and the seeds): one row of
    panels per architecture, the teacher's first, one column per suite."""
    suites = list(dict.fromkeys(curves["suite"]))
    rows = arch_rows(curves)
    fig = Figure(figsize=(4.6 * len(suites) + 2, 2.4 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(suites), sharex=True, sharey=True, squeeze=False)
    for (role, arch), row in zip(rows, axes, strict=True):
        mine = curves[(curves["role"] == role) & (curves["arch"] == arch)]
        for ax, suite in zip(row, suites, strict=True):
            for label, g in mine[mine["suite"] == suite].groupby("label", sort=False):
                ax.plot(g["level"], g["balanced_accuracy"], marker="o", label=label, **line_style(label))
        row[0].set_ylabel("balanced accuracy")
        row[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    names = {"source": "the source study's suite", "medmnistc": "MedMNIST-C"}
    for ax, suite in zip(axes[0], suites, strict=True):
        ax.set_title(names.get(suite, suite), fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("severity level (0 = clean)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def pareto_figure(pts: pd.DataFrame) -> Figure:
    """Test macro-F1 (mean over seeds) vs CPU p50 latency; bubble area ∝ file size; the front (chosen on
    validation, ``pts["pareto"]``) is joined."""
    fig = Figure(figsize=(10, 5), layout="constrained")
    ax = fig.add_subplot()
    markers = dict(zip(["eager", "torchscript", "ort_fp32", "ort_int8"], "osD^", strict=True))
    colours = palette(pts["label"])
    area = 20 + 400 * pts["file_bytes"] / pts["file_bytes"].max()
    for (label, backend), g in pts.groupby(["label", "backend"], sort=False):
        ax.scatter(g["p50_ms"], g["macro_f1"], s=area[g.index], marker=markers.get(backend, "o"),
                   color=colours[label], alpha=0.6, edgecolor="black", linewidth=0.5)
    front = pts[pts["pareto"]]
    ax.plot(front["p50_ms"], front["macro_f1"], color="black", lw=1, ls="--", label="Pareto front")
    for label, c in colours.items():
        ax.scatter([], [], color=c, label=label)
    names = {"eager": "eager PyTorch", "torchscript": "TorchScript", "ort_fp32": "ONNX Runtime FP32",
             "ort_int8": "ONNX Runtime INT8"}
    for backend, mk in markers.items():
        ax.scatter([], [], marker=mk, color="grey", label=names[backend])
    ax.set_xscale("log")
    ax.set(xlabel="CPU latency p50, batch 1 (ms, log scale)", ylabel="test macro-F1 (mean over seeds)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ----------------------------------------------------------------------------- Grad-CAM


def cam_layer(model, size: int, min_side: int = 4) -> tuple[str, int]:
    """The deepest feature stage (timm ``feature_info`` module name) whose map is at least ``min_side`` wide."""
    with torch.no_grad():
        maps = model.forward_intermediates(torch.zeros(1, 3, size, size), indices=list(range(len(model.feature_info))),
                                           intermediates_only=True)
    sides = [int(m.shape[-1]) for m in maps]
    idx = max((i for i, s in enumerate(sides) if s >= min_side), default=0)
    return model.feature_info[idx]["module"], sides[idx]


def gradcam_panels(runs: pd.DataFrame, models: list[str]) -> tuple[Figure, pd.DataFrame]:
    """Grad-CAM (``pytorch_grad_cam``) of each model's first seed for the true class of one test image per class
    (the first test image of each of the 7 classes, by index: no score picks them), each model on the images at
    its own input size (a 128 px teacher beside 64 px students).

    Each map is computed at the deepest stage with a map of at least 4x4 (a 1x1 map has no spatial
    content) and min-max scaled per image by the package before it is laid over the image.
    """
    first = runs[runs["model"].isin(models)].sort_values("seed").drop_duplicates("model").set_index("model").loc[models]
    data = {p: json.loads((p / "run_config.json").read_text())["data"] for p in first["path"]}
    arrays = {d["size"]: D.load(D.DataConfig(**d)) for d in data.values()}
    y = next(iter(arrays.values())).labels["test"]
    if not all(np.array_equal(a.labels["test"], y) for a in arrays.values()):
        raise ValueError("the Grad-CAM models were tested on different test images (their input sizes' splits differ)")
    classes = [c for c in range(info.NUM_CLASSES) if (y == c).any()]
    pick = [int(np.flatnonzero(y == c)[0]) for c in classes]
    fig = Figure(figsize=(1.7 * (len(first) + 1), 1.7 * len(pick) + 0.9), layout="constrained")
    axes = fig.subplots(len(pick), len(first) + 1, squeeze=False)
    for i, img in enumerate(next(iter(arrays.values())).images["test"][pick]):
        axes[i][0].imshow(img)
        axes[i][0].set_ylabel(info.CLASS_NAMES[y[pick[i]]], fontsize=9)
    axes[0][0].set_title("image", fontsize=9)
    layers = []
    for j, (model, r) in enumerate(first.iterrows(), start=1):
        images = arrays[data[r["path"]]["size"]].images["test"][pick]
        net = load_run(r["path"]).model
        layer, side = cam_layer(net, images.shape[1])
        layers.append({"model": model, "label": r["label"], "layer": layer, "map_side": side,
                       "size": int(data[r["path"]]["size"])})
        with GradCAM(model=net, target_layers=[net.get_submodule(layer)]) as cam:
            maps = cam(input_tensor=AU.normalise(images), targets=[ClassifierOutputTarget(int(y[k])) for k in pick])
        for i in range(len(pick)):
            axes[i][j].imshow(show_cam_on_image(images[i].astype(np.float32) / 255, maps[i], use_rgb=True,
                                                image_weight=0.5))
        header = [line for part in r["label"].split(" · ") for line in textwrap.wrap(part, 18, break_long_words=False)]
        axes[0][j].set_title("\n".join(header), fontsize=9)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, pd.DataFrame(layers)
