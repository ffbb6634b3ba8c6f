"""The manuscript's front matter (``paper/index.qmd``): the byline under the title and the abstract.

The abstract is written from the results (``numbers.json``, the paired verdicts, the committed studies), so it
says what this rendering's runs found, not what an earlier run did.
"""

from __future__ import annotations

from importlib import metadata

from edgekd.paper.format import and_list, num, ratio, signed
from edgekd.paper.shared import counted, external_macro_f1, verdicts
from edgekd.paper.sources import Source


def byline(src: Source) -> str:
    """Under the title: the project, its version and the results' date; the build details are in the provenance
    supplement."""
    when = str(src.numbers.get("generated", "")).split(" ")[0]
    kind = "the published reference" if src.kind == "published" else "this checkout's run"
    return (f"*MedMNIST-EdgeAI (edgekd {metadata.version('edgekd')}); results of {kind}, aggregated {when}. "
            "Supplement S11 records how they were made.*")


def student_sizes(src: Source) -> list[int]:
    """The input sizes of the official-split students (``arms.csv``), smallest first; [] without the table."""
    if not src.has("arms.csv"):
        return []
    arms = src.csv("arms.csv")
    return sorted({int(x) for x in arms.loc[(arms["role"] == "student") & (arms["split"] == "official"), "img_size"]})


def abstract(src: Source, gap: Source | None = None) -> str:
    """The abstract, written from the results (``numbers.json`` and the paired verdicts) and, where committed, the
    capacity-gap study ``gap``."""
    n, sizes = src.numbers, student_sizes(src)
    archs = list(n.get("student_archs") or [])
    students = and_list(archs) if archs else "student"
    at = (f"{n['size']} px" if len(sizes) < 2 else
          f"{sizes[0]} px (some also at {', '.join(str(z) for z in sizes[1:])} px)")
    teacher = f"an {n['teacher']}" if n["teacher"] and n["teacher"][0] in "AEIOU" else f"a {n['teacher'] or 'teacher'}"
    parts = [f"Can a small skin-lesion classifier for edge devices learn from a larger teacher through knowledge "
             f"distillation (KD)? On DermaMNIST "
             f"(HAM10000, 7 classes) with students at {at}, we distil {teacher} into {students} students and "
             f"compare each, seed by seed, with the same architecture trained without a teacher, under an analysis "
             f"plan fixed before the runs (up to {n['n_seeds']} seeds; {n['n_valid']} of {n['n_runs']} runs usable"
             + (f", {n['n_excluded']} excluded because they collapsed to a near-constant predictor" if n["n_excluded"] else "")
             + "). Every choice is made on validation."]
    if n["teacher"]:
        ci = (f" [{num(n['teacher_macro_f1_low'])},\u00a0{num(n['teacher_macro_f1_high'])}]"
              if n.get("teacher_macro_f1_low") is not None else "")
        parts.append(f"The teacher reaches test macro-F1 {num(n['teacher_macro_f1'])}{ci}.")
    if src.has("paired_kd.csv"):
        df = verdicts(src)
        parts.append(f"Comparing KD with no KD against a smallest effect of interest of 0.02 macro-F1, "
                     f"{counted(df['verdict_label'])}.")
    else:
        parts.append("No KD run has a usable no-KD baseline of the same seed in this study, so the effect of "
                     "distillation is not measured here.")
    if gap is not None:
        g = gap.csv("gap.csv")
        parts.append(f"In an exploratory comparison at an earlier KD setting, a weaker teacher trained from scratch gave "
                     f"larger gains than the pretrained one in {int(g['seeds_smaller'].sum())} of "
                     f"{int(g['seeds'].sum())} seed pairs.")
    if src.has("external.csv"):
        wide, sets = external_macro_f1(src)
        if sets:
            d = wide[[f"gap|{s}" for s in sets]].stack()
            parts.append(f"On external ISIC 2018 test images, macro-F1 changes by {signed(d.min())} to "
                         f"{signed(d.max())} against the official test set.")
    if n["edge_model"] and n["edge_speedup_low"] is not None:
        parts.append(f"The edge model, {n['edge_model']} in 8-bit integers, changes test macro-F1 by "
                     f"{signed(n['edge_delta_macro_f1'])} and runs {ratio(n['edge_speedup_median'])} "
                     f"[{ratio(n['edge_speedup_low'])},\u00a0{ratio(n['edge_speedup_high'])}] as fast as in 32-bit "
                     "floating point.")
    parts.append("Every number is generated from the runs, and the study reruns with one command.")
    return " ".join(parts)
