"""Scale-out: the smoke training grid on a Dask LocalCluster gives the same results as the sequential run."""

from __future__ import annotations

import json

import numpy as np

from edgekd import runner as R


def test_local_cluster_matches_sequential(smoke_outputs, tmp_path):
    root, _ = smoke_outputs
    summary = R.run_profile("smoke", tmp_path, executor="dask", workers=2, only=["data", "teacher", "student"])
    ran = [row for row in summary if row["status"] == "ran"]
    assert len(ran) == 1 + 1 + 12 and all(row["wall_time_s"] > 0 for row in ran)
    for row in ran:
        if row["stage"] == "data":
            continue
        seq, par = root / row["run_id"], tmp_path / "smoke" / row["run_id"]
        m_seq = json.loads((seq / "metrics.json").read_text())
        m_par = json.loads((par / "metrics.json").read_text())
        for key in ("best_epoch", "test_acc", "test_macro_f1", "val_macro_f1"):
            assert m_seq[key] == m_par[key], (row["run_id"], key)
        a, b = np.load(seq / "predictions.npz"), np.load(par / "predictions.npz")
        np.testing.assert_allclose(a["test_logits"], b["test_logits"], atol=1e-5)
