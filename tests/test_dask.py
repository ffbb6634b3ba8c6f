"""Scale-out: training runs on a Dask LocalCluster give the same results as the sequential smoke run.

The cluster trains one run of each kind in the smoke grid, from params/smoke.yaml with each KD setting narrowed
to some of its archs and seeds (the runs' parameters, so their results, are the smoke run's): the teacher, then
every student architecture, both KD settings and both seeds, a no-KD student beside the teacher on the second
worker and two KD students after it. The other nine student runs of the grid repeat these combinations through
the same code. The data stage is the smoke run's own, copied (fresh), with its DermaMNIST cache.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import yaml

from edgekd.pipeline import plan as PL
from edgekd.pipeline import runner as R

#: KD setting -> the archs and seeds it keeps.
NARROWED = {"kdat": {"archs": ["resnet18"], "seeds": [1]},
            "nokd": {"archs": ["mobilenetv2_100"], "seeds": [0]}}
TRAINED = {"teacher-resnet50-s0", "student-resnet18-kdat-s1", "student-mobilenetv2_100-nokd-s0"}


def test_local_cluster_matches_sequential(smoke_outputs, tmp_path):
    root, _ = smoke_outputs
    prof = yaml.safe_load((PL.PARAMS_DIR / "smoke.yaml").read_text())
    assert [k["name"] for k in prof["students"]["kd"]] == list(NARROWED)
    for setting in prof["students"]["kd"]:
        setting.update(NARROWED[setting["name"]])
    profile = tmp_path / "smoke.yaml"
    profile.write_text(yaml.safe_dump(prof))
    outputs = tmp_path / "outputs"
    shutil.copytree(root / "data", outputs / "smoke" / "data")
    shutil.copytree(root.parent / "cache", outputs / "cache")

    summary = R.run_profile(profile, outputs, executor="dask", workers=2, only=["data", "teacher", "student"],
                            estimate=False)
    assert [row["status"] for row in summary if row["stage"] == "data"] == ["fresh"]  # the smoke run's, reused
    ran = [row for row in summary if row["status"] == "ran"]
    assert {row["run_id"] for row in ran} == TRAINED and all(row["stage"] != "data" for row in ran)
    assert len(ran) == 1 + 2 and all(row["wall_time_s"] > 0 for row in ran)
    for row in ran:
        seq, par = root / row["run_id"], outputs / "smoke" / row["run_id"]
        m_seq = json.loads((seq / "metrics.json").read_text())
        m_par = json.loads((par / "metrics.json").read_text())
        for key in ("best_epoch", "test_acc", "test_macro_f1", "val_macro_f1"):
            assert m_seq[key] == m_par[key], (row["run_id"], key)
        a, b = np.load(seq / "predictions.npz"), np.load(par / "predictions.npz")
        np.testing.assert_allclose(a["test_logits"], b["test_logits"], atol=1e-5)
