"""Training loop: determinism, resume after a kill, teacher caching, best-on-val, single rebalancing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
import torch

from edgekd.core import augment as AU
from edgekd.core.inference import load_run, predict
from edgekd.core.models import create_model
from edgekd.stages import data as D
from edgekd.stages import train as T

CFG = dict(epochs=2, batch_size=32, lr=2e-3, stem_stride=2, progress=False, warmup_epochs=0.5, threads=2, collapse="warn")


def _fit(arrays, run_dir, seed=0, kd=None, teacher_dir=None, arch="resnet18", **over):
    cfg = T.TrainConfig(**{**CFG, **over})
    T.seed_everything(seed)
    model = create_model(arch, 28, stem_stride=cfg.stem_stride)
    hist = T.fit(model, arrays, cfg, run_dir, seed, kd, teacher_dir)
    return model, hist


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


DATA = D.DataConfig(size=28, subset={"train": 96, "val": 48, "test": 48})


def test_training_is_deterministic_on_cpu(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        T.run_train(tmp_path / name, "resnet18", seed, DATA, T.TrainConfig(**CFG))
        runs[name] = (torch.load(tmp_path / name / "best.pt"), pd.read_csv(tmp_path / name / "history.csv"))
    (wa, ha), (wb, hb), (wc, _) = runs["a"], runs["b"], runs["c"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    timing = ["epoch_time_s", "val_time_s"]  # wall-clock columns; everything else must match exactly
    pd.testing.assert_frame_equal(ha.drop(columns=timing), hb.drop(columns=timing))
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


@pytest.mark.usefixtures("data_dir")  # DATA reads the default (real) data folder
def test_a_finished_run_of_the_same_recipe_is_read_not_trained_again(tmp_path, capsys):
    """A notebook run twice (or by both notebook tests) reads its finished run; another recipe, or a best.pt that
    is not the one the run recorded, trains again."""
    run, cfg = tmp_path / "run", T.TrainConfig(**CFG)
    first = T.run_train(run, "resnet18", 0, DATA, cfg)
    history = (run / "history.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert T.run_train(run, "resnet18", 0, DATA, cfg) == first
    assert "read, not trained again" in capsys.readouterr().out
    assert (run / "history.csv").stat().st_mtime_ns == history

    weights = torch.load(run / "best.pt")
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, run / "best.pt")
    T.run_train(run, "resnet18", 0, DATA, cfg)
    assert "read, not trained again" not in capsys.readouterr().out
    assert all(torch.equal(weights[k], v) for k, v in torch.load(run / "best.pt").items())  # trained anew: the same

    T.run_train(run, "resnet18", 0, DATA, T.TrainConfig(**{**CFG, "lr": 4e-3}))
    assert "read, not trained again" not in capsys.readouterr().out
    assert json.loads((run / "run_config.json").read_text())["train"]["lr"] == 4e-3


def test_outputs_of_a_run(tiny, tmp_path):
    _, hist = _fit(tiny, tmp_path / "r")
    assert list(hist["epoch"]) == [1, 2]
    assert {"train_loss", "val_acc", "val_macro_f1", "lr"} <= set(hist.columns)
    assert (tmp_path / "r" / "history.csv").exists() and (tmp_path / "r" / "best.pt").exists()
    assert any((tmp_path / "r" / "tb").iterdir())


def test_best_epoch_is_chosen_on_val_not_test(tiny, tmp_path):
    cfg = T.TrainConfig(**{**CFG, "epochs": 3})
    metrics = T.run_train(tmp_path / "run", "resnet18", 0, DATA, cfg)
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    assert metrics["best_epoch"] == int(hist.loc[hist["val_macro_f1"].idxmax(), "epoch"])
    assert metrics["val_macro_f1"] == pytest.approx(hist["val_macro_f1"].max())
    preds = np.load(tmp_path / "run" / "predictions.npz")
    assert preds["test_logits"].shape == (48, 7)
    test_acc = float((preds["test_logits"].argmax(1) == preds["test_labels"]).mean())
    assert metrics["test_acc"] == pytest.approx(test_acc)
    assert not (tmp_path / "run" / "last.pt").exists()


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from edgekd.stages import data as D
    from edgekd.stages import train as T
    from edgekd.core.models import create_model
    arrays = D.subset(D.get_dermamnist(28), {"train": 96, "val": 48, "test": 48})
    cfg = T.TrainConfig(**%r)
    T.seed_everything(0)
    T.fit(create_model("resnet18", 28, stem_stride=2), arrays, cfg, sys.argv[1], 0)
    """
)


def test_resume_after_kill_matches_uninterrupted(tiny, tmp_path):
    over = {**CFG, "epochs": 3}
    ref, _ = _fit(tiny, tmp_path / "ref", epochs=3)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT % over, str(run)], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("epoch 1:"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "last.pt").exists()
    done_before = len(pd.read_csv(run / "history.csv"))
    assert done_before < 3
    resumed, hist = _fit(tiny, run, epochs=3)
    assert list(hist["epoch"]) == [1, 2, 3]
    assert _same_weights(ref, resumed)


def _teacher(tiny, tmp_path):
    tdir = tmp_path / "teacher"
    cfg = T.TrainConfig(**{**CFG, "epochs": 1})
    T.run_train(tdir, "resnet18", 0, DATA, cfg)  # a small teacher keeps the test fast
    return tdir


def test_cached_teacher_gives_the_live_teachers_loss(tiny, tmp_path):
    """The cache, read by view and image, gives each batch the loss the live teacher gives, to float32 rounding (the
    cache runs the teacher in eval batches, the live one per training batch: 5e-5 in the attention term); a wrong
    view is caught. Over an epoch the two runs then drift apart as training amplifies that rounding (0.11 % in the KD
    term on an AVX-512 machine, against a 0.1 % bound that failed there), so the epoch means are held to 1 %."""
    tdir = _teacher(tiny, tmp_path)
    kd = dict(mode="hinton", alpha=0.3, temperature=2.0, beta=50.0)
    cfg, cpu = T.TrainConfig(**CFG), torch.device("cpu")
    cached = T._batch_loss(torch.nn.CrossEntropyLoss(), tiny, cfg, T.KDConfig(**kd, teacher_cache=True), tdir, cpu)
    live = T._batch_loss(torch.nn.CrossEntropyLoss(), tiny, cfg, T.KDConfig(**kd, teacher_cache=False), tdir, cpu)
    assert cached.cache is not None and live.teacher is not None
    gen = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(tiny.labels["train"]), generator=gen)[:32]
    v = AU.sample_views(32, cfg.augment, gen)
    x, y = AU.apply_views(AU.normalise(tiny.images["train"][idx.numpy()]), v), torch.as_tensor(tiny.labels["train"][idx.numpy()])
    student = create_model("resnet18", 28, stem_stride=2).eval()
    with torch.no_grad():
        _, loss_cached, parts_cached = cached(student, x, y, v, idx, cpu)
        _, loss_live, parts_live = live(student, x, y, v, idx, cpu)
        _, _, parts_wrong = cached(student, x, y, (v + 1) % 8, idx, cpu)
    assert loss_cached.item() == pytest.approx(loss_live.item(), rel=1e-4)
    assert parts_cached == pytest.approx(parts_live, rel=1e-4) and parts_cached["at"] > 0
    assert parts_wrong["at"] != pytest.approx(parts_live["at"], rel=1e-2)

    _, h1 = _fit(tiny, tmp_path / "cached", kd=T.KDConfig(**kd, teacher_cache=True), teacher_dir=tdir, epochs=1)
    _, h2 = _fit(tiny, tmp_path / "live", kd=T.KDConfig(**kd, teacher_cache=False), teacher_dir=tdir, epochs=1)
    assert len(list(tdir.glob("teacher_cache_*_dihedral_at_*.pt"))) == 1
    for col in ("train_loss", "train_ce", "train_kd", "train_at"):
        assert h1[col].iloc[0] == pytest.approx(h2[col].iloc[0], rel=1e-2), col
    assert h1["train_kd"].iloc[0] > 0 and h1["train_at"].iloc[0] > 0


def test_kd_none_ignores_the_teacher(tiny, tmp_path):
    _, h = _fit(tiny, tmp_path / "nokd", kd=T.KDConfig(mode="none"), epochs=1)
    assert "train_kd" not in h.columns


def test_rebalancing_is_applied_once(tiny):
    labels = tiny.labels["train"]
    ce, sampler = T.build_objective(T.TrainConfig(**{**CFG, "balance": "sampler"}), labels)
    assert sampler is not None and ce.weight is None
    ce, sampler = T.build_objective(T.TrainConfig(**{**CFG, "balance": "weights"}), labels)
    assert sampler is None and ce.weight is not None
    ce, sampler = T.build_objective(T.TrainConfig(**CFG), labels)
    assert sampler is None and ce.weight is None


@pytest.mark.parametrize(
    "over", [{"epochs": 0}, {"lr": 0}, {"balance": "both"}, {"augment": "mixup"}, {"loss": "hinge"}, {"optimizer": "lion"}]
)
def test_bad_train_settings(over):
    with pytest.raises(ValueError):
        T.TrainConfig(**{**CFG, **over})


def test_run_config_round_trips(tiny, tmp_path):
    tdir = _teacher(tiny, tmp_path)
    cfg = json.loads((tdir / "run_config.json").read_text())
    assert cfg["train"] == asdict(T.TrainConfig(**{**CFG, "epochs": 1}))
    device = T.resolve_device(cfg["train"]["device"])  # the saved logits are float32 on the training device
    model = load_run(tdir, device).model
    logits, _ = predict(model, tiny.images["test"], cfg["train"]["eval_batch_size"], device, amp=False)
    saved = np.load(tdir / "predictions.npz")["test_logits"]
    # CUDA convolutions run in TF32 by default (10-bit mantissa) and pick algorithms by memory
    # format (training leaves the model channels_last): there, logits agree to about 1e-4.
    assert np.allclose(logits, saved, atol=1e-3 if device.type == "cuda" else 1e-5)


def test_collapse_guard_stops_a_broken_run(tmp_path):
    """lr 10 blows the weights up: every prediction lands on one class, and the run must fail loudly."""
    cfg = T.TrainConfig(**{**CFG, "lr": 10.0, "collapse": "error"})
    with pytest.raises(T.CollapsedRun, match=r"run broken collapsed: \d+% of its validation predictions are '\w+'"):
        T.run_train(tmp_path / "broken", "resnet18", 0, DATA, cfg)
    assert not (tmp_path / "broken" / "predictions.npz").exists()  # nothing for the tables to pick up
    assert not (tmp_path / "broken" / "metrics.json").exists()
    flagged = T.run_train(tmp_path / "flagged", "resnet18", 0, DATA, T.TrainConfig(**{**CFG, "lr": 10.0}))
    assert "validation predictions are" in flagged["collapsed"]
    assert json.loads((tmp_path / "flagged" / "metrics.json").read_text())["collapsed"] == flagged["collapsed"]


def test_collapse_reason_rules():
    y = np.array([5] * 60 + [0] * 20 + [1] * 20)
    constant = np.eye(7)[np.full(100, 5)]
    assert "100% of its validation predictions are 'nv'" in T.collapse_reason(y, constant)
    perfect = np.eye(7)[y]
    assert T.collapse_reason(y, perfect) is None
    wrong = np.eye(7)[(y + 1) % 7]  # spread over classes but worse than always saying 'nv'
    assert "constant predictor" in T.collapse_reason(y, wrong)


@pytest.mark.parametrize("kd", [dict(mode="dkd"), dict(mode="dist", temperature=1.0),
                                dict(mode="hinton", standardize=True, teacher_views="mean")])
def test_modern_kd_modes_train_from_the_cache(tiny, tmp_path, kd):
    tdir = _teacher(tiny, tmp_path)
    _, hist = _fit(tiny, tmp_path / "s", kd=T.KDConfig(**kd), teacher_dir=tdir, epochs=1)
    assert hist["train_kd"].iloc[0] > 0 and np.isfinite(hist["train_loss"]).all()


@pytest.mark.parametrize("kd, message", [
    (dict(mode="dist", standardize=True), "standardize applies to the KL-based modes"),
    (dict(mode="hinton", teacher_views="mean", teacher_cache=False), "needs teacher_cache"),
    (dict(mode="dkd", dkd_beta=-1.0), "DKD needs"),
    (dict(mode="fitnet"), "kd mode 'fitnet'"),
])
def test_bad_kd_settings(kd, message):
    with pytest.raises(ValueError, match=message):
        T.KDConfig(**kd)


def test_phases_account_for_the_wall_time(tmp_path):
    metrics = T.run_train(tmp_path / "r", "resnet18", 0, DATA, T.TrainConfig(**CFG))
    phases = metrics["phases_s"]
    assert set(phases) == {"load_data", "fit", "epochs", "validation", "finish"}
    assert phases["epochs"] <= phases["fit"] and phases["validation"] <= phases["epochs"]
    assert phases["load_data"] + phases["fit"] + phases["finish"] <= metrics["wall_time_s"] + 1e-6
