"""External test sets: profile entries, loading through the training recipe, and evaluate_external's tables."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import softmax

from edgekd.core import calibration as C
from edgekd.core import info
from edgekd.core import metrics as M
from edgekd.core.config import ExternalSet, parse_external
from edgekd.core.inference import load_run, predict, read_config
from edgekd.core.info import CLASS_NAMES, NUM_CLASSES
from edgekd.pipeline import plan as PL
from edgekd.pipeline import runner as R
from edgekd.stages import evaluate as V
from edgekd.stages.external import deployed_metrics, deployed_table, evaluate_external, load_external
from edgekd.stages.operating import fit_deployment


def test_parse_external_entries(tmp_path, isic):
    images, csv, _ = isic
    base = images.parent.parent
    entry = {"name": "isic-2018.v1", "images": "isic/images", "labels": "isic/ground_truth.csv"}
    assert parse_external([entry], base) == [ExternalSet("isic-2018.v1", images, csv)]
    assert parse_external(None) == [] and parse_external([]) == []
    bad = {
        "must be a list": {"name": "x", "images": "a", "labels": "b"},
        "must be a mapping": ["isic/images"],
        "missing ['labels']": [{"name": "x", "images": "isic/images"}],
        "unknown ['split']": [{**entry, "split": "test"}],
        "plain folder name": [{**entry, "name": "../escape"}],
        "image folder": [{**entry, "images": "isic/nowhere"}],
        "labels CSV": [{**entry, "labels": "isic/none.csv"}],
        "unique, repeated: ['isic-2018.v1']": [entry, entry],
    }
    for message, entries in bad.items():
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
            parse_external(entries, base)


def test_load_external_is_the_training_recipe(isic, arrays28):
    """The JPEGs read from an outside folder give exactly the pixels of the DermaMNIST arrays the models train on."""
    images, csv, rows = isic
    x, y, ids = load_external(ExternalSet("isic", images, csv), 28)
    assert x.dtype == np.uint8 and x.shape == (len(rows), 28, 28, 3)
    assert ids == sorted(rows["image_id"])
    where = {image_id: i for i, image_id in enumerate(arrays28.image_ids["test"])}
    index = [where[i] for i in ids]
    np.testing.assert_array_equal(x, arrays28.images["test"][index])
    np.testing.assert_array_equal(y, arrays28.labels["test"][index])


def test_load_external_errors_name_the_set_and_the_file(tmp_path, isic):
    images, csv, rows = isic
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    (folder / "ISIC_0000000.jpg").write_bytes((folder / f"{rows['image_id'][0]}.jpg").read_bytes()[:500])
    labels = tmp_path / "labels.csv"
    table = pd.read_csv(csv)
    pd.concat([table, table.iloc[:1].assign(image="ISIC_0000000")]).to_csv(labels, index=False)
    with pytest.raises(ValueError, match=r"external set 'odd': 1 images cannot be read: ISIC_0000000.jpg \(corrupt or truncated"):
        load_external(ExternalSet("odd", folder, labels), 28)
    with pytest.raises(ValueError, match="external set 'odd': 1 images have no row in"):
        load_external(ExternalSet("odd", folder, csv), 28)


def test_evaluate_external_writes_the_evaluate_stage_tables(tmp_path, run_dir, isic):
    images, csv, _ = isic
    run = tmp_path / run_dir.name
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "eval"))
    stale = run / "eval" / "external" / "isic" / "old.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("from an earlier evaluation")
    sets = [ExternalSet("isic", images, csv), ExternalSet("again", images, csv)]
    table = evaluate_external(run, sets, n_resamples=100, device="cpu")

    loaded = load_run(run)
    x, y, ids = load_external(sets[0], loaded.size)
    logits = predict(loaded.model, x)[0]
    saved = V.load_predictions(run)
    fitted = fit_deployment(saved["val_logits"], saved["val_labels"])
    assert fitted["temperature"] == C.fit_temperature(saved["val_logits"], saved["val_labels"])
    out = run / "eval" / "external" / "isic"
    assert sorted(p.name for p in out.iterdir()) == ["calibration.csv", "deployed.csv", "metrics.csv", "operating_points.json",
                                                    "per_class.csv", "predictions.csv"]
    assert json.loads((out / "operating_points.json").read_text())["temperature"] == fitted["temperature"]
    probs = softmax(logits.astype(float), axis=1)
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), V.metrics_table(y, probs, 100, 0), check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(pd.read_csv(out / "calibration.csv"), C.calibration_report(y, logits, fitted["temperature"]),
                                  check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_class.csv"), M.per_class_table(y, probs), check_dtype=False)
    probs_cal = C.apply_temperature(logits, fitted["temperature"])
    deployed = pd.read_csv(out / "deployed.csv").set_index("metric")
    for name, fn in deployed_metrics(fitted).items():
        assert deployed.loc[name, "value"] == pytest.approx(fn(y, probs_cal), abs=1e-12), name
        assert deployed.loc[name, "ci_low"] <= deployed.loc[name, "value"] + 1e-12 <= deployed.loc[name, "ci_high"] + 2e-12
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions["image"]) == ids and list(predictions["label"]) == [CLASS_NAMES[i] for i in y]
    np.testing.assert_allclose(predictions[[f"p_{c}" for c in CLASS_NAMES]].to_numpy(), probs_cal, atol=1e-12)

    assert list(table.columns) == ["set", "n", "table", "metric", "value", "ci_low", "ci_high"]
    assert list(dict.fromkeys(table["set"])) == ["isic", "again"] and (table["n"] == len(y)).all()
    first = table[table["set"] == "isic"]
    np.testing.assert_allclose(first[first["table"] == "metrics"]["value"], V.metrics_table(y, probs, 100, 0)["value"])
    np.testing.assert_allclose(table[table["set"] == "again"]["value"], first["value"])
    assert not stale.exists()


def test_evaluate_external_uses_the_runs_test_time_views(tmp_path, run_dir, isic):
    images, csv, _ = isic
    run = tmp_path / run_dir.name
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("tb", "eval"))
    cfg = read_config(run)
    cfg["train"]["tta"] = True
    (run / "run_config.json").write_text(json.dumps(cfg))
    evaluate_external(run, [ExternalSet("isic", images, csv)], n_resamples=20, device="cpu")
    loaded = load_run(run)
    x, _, _ = load_external(ExternalSet("isic", images, csv), loaded.size)
    saved = V.load_predictions(run)
    T = C.fit_temperature(saved["val_logits"], saved["val_labels"])
    written = pd.read_csv(run / "eval" / "external" / "isic" / "predictions.csv")[[f"p_{c}" for c in CLASS_NAMES]].to_numpy()
    tta = C.apply_temperature(predict(loaded.model, x, views=loaded.tta_views)[0], T)
    single = C.apply_temperature(predict(loaded.model, x)[0], T)
    np.testing.assert_allclose(written, tta, atol=1e-6)
    assert not np.allclose(written, single, atol=1e-3)


def _with_external(tmp_path, images, labels) -> str:
    """The smoke profile with one external set, written to ``tmp_path``."""
    prof = yaml.safe_load((PL.PARAMS_DIR / "smoke.yaml").read_text())
    prof["external"] = [{"name": "isic", "images": str(images), "labels": str(labels)}]
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    return str(path)


def test_default_profile_scores_the_isic_set_in_every_evaluation_and_expands_without_it(tmp_path):
    """The default profile's external set is the shared ISIC 2018 half, on each evaluation of the official split
    (not robustness or efficiency); a plan expands where the folder is absent (the runner checks it before work)."""
    specs = R.expand(R.load_profile("default"), tmp_path)
    shared = info.REPO_ROOT / "../shared/data/isic2018_test_half"
    expected = [{"name": "isic2018_test_half", "images": str(shared / "images"),
                 "labels": str(shared / "ISIC2018_Task3_Test_GroundTruth_half.csv")}]
    evaluations = [s for s in specs if s.stage == "evaluate"]
    assert evaluations and all(s.parameters["external"] == expected for s in evaluations)
    assert not [s for s in specs if s.stage != "evaluate" and "external" in s.parameters]
    assert '"<repo>/../shared/data/isic2018_test_half/images"' in evaluations[0].portable_parameters()
    absent = _with_external(tmp_path, tmp_path / "nowhere", tmp_path / "none.csv")
    evaluate = next(s for s in R.expand(R.load_profile(absent), tmp_path) if s.stage == "evaluate")
    assert evaluate.components()["external"] == {"isic": "missing"}


def test_external_images_and_labels_are_part_of_the_evaluation_digest(tmp_path, isic):
    images, csv, _ = isic
    labels = tmp_path / "labels.csv"
    shutil.copyfile(csv, labels)
    profile = _with_external(tmp_path, images, labels)

    def digest() -> str:
        evaluate = next(s for s in R.expand(R.load_profile(profile), tmp_path) if s.stage == "evaluate")
        return evaluate.components()["external"]["isic"]

    before = digest()
    assert before != "missing" and digest() == before
    table = pd.read_csv(labels)
    table.loc[0, ["MEL", "NV"]] = table.loc[0, ["NV", "MEL"]].to_numpy()  # one image relabelled
    table.to_csv(labels, index=False)
    assert digest() != before


@pytest.mark.parametrize("problem", ["no folder", "no labels file", "an image without a label"])
def test_runner_refuses_an_external_set_it_cannot_score_before_any_work(tmp_path, isic, capsys, problem):
    images, csv, _ = isic
    labels = tmp_path / "labels.csv"
    shutil.copyfile(csv, labels)
    if problem == "no folder":
        images = tmp_path / "nowhere"
    elif problem == "no labels file":
        labels = tmp_path / "none.csv"
    else:
        pd.read_csv(csv).iloc[1:].to_csv(labels, index=False)
    outputs = tmp_path / "outputs"
    for dry in ([], ["--dry-run"]):
        assert R.main([_with_external(tmp_path, images, labels), "--outputs", str(outputs), *dry]) == 2
        err = capsys.readouterr().err
        assert "external set 'isic'" in err and "Traceback" not in err, err
    assert not outputs.exists()


def test_deployed_table_equals_each_metrics_own_bootstrap_bitwise():
    """The table shares work across metrics (one headline table, one operating report per resample); every row must be
    exactly what that metric's own bootstrap of its reference function gives."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 5, 250)  # two classes absent: macro-F1 over the classes present
    logits = rng.normal(size=(250, NUM_CLASSES))
    logits[np.arange(250), y] += 1.5
    probs = softmax(logits, axis=1)
    fitted = {"temperature": 1.0, "melanoma_threshold": 0.2, "abstain_threshold": 0.3}
    table = deployed_table(y, probs, fitted, n_resamples=150, seed=2).set_index("metric")
    fns = deployed_metrics(fitted, M.scored_classes(y))
    assert list(table.index) == list(fns)
    for name, fn in fns.items():
        assert tuple(table.loc[name]) == M.bootstrap_ci(y, probs, fn, 150, 2), name
