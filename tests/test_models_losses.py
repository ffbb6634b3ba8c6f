"""Model factory and loss terms, checked against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd.core import config, info
from edgekd.core import losses as L
from edgekd.core.config import KDConfig
from edgekd.core.models import AT_STAGES, HEAD_INIT_STD, create_model, default_stem_stride, forward_with_stages

#: Channels of the AT stages 1, 2, 3 (forward_intermediates indices) of each architecture.
AT_CHANNELS = {"resnet50": (256, 512, 1024), "resnet18": (64, 128, 256),
               "mobilenetv2_100": (24, 32, 96), "efficientnet_b0": (24, 40, 112),
               "efficientnet_lite0": (24, 40, 112), "efficientnet_lite1": (24, 40, 112), "efficientnet_lite2": (24, 48, 120)}


@pytest.mark.parametrize("arch", info.ARCHS)
@pytest.mark.parametrize(("size", "stride", "sides"), [(28, 1, (14, 7, 4)), (28, 2, (7, 4, 2)),
                                                       (64, 1, (32, 16, 8)), (64, 2, (16, 8, 4))])
def test_attention_stages_are_stages_1_2_3(arch, size, stride, sides):
    """The matched maps sit at 1/2, 1/4, 1/8 of the stem's output, with each arch's own channels."""
    model = create_model(arch, size, stem_stride=stride).eval()
    x = torch.randn(2, 3, size, size)
    logits, feats = forward_with_stages(model, x, AT_STAGES)
    assert AT_STAGES == (1, 2, 3)
    assert [tuple(f.shape[1:]) for f in feats] == [(c, s, s) for c, s in zip(AT_CHANNELS[arch], sides, strict=True)]
    assert torch.allclose(logits, model(x), atol=1e-5)
    reductions = [model.feature_info[i]["reduction"] for i in AT_STAGES]
    assert reductions == [4, 8, 16]  # timm's reductions for a stride-2 stem: stages 1, 2, 3, not the last three


def test_stem_stride_rule():
    assert default_stem_stride(28) == default_stem_stride(64) == 1
    assert default_stem_stride(128) == default_stem_stride(224) == 2
    assert create_model("resnet18", 28, stem_stride=2).conv1.stride == (2, 2)
    assert create_model("efficientnet_b0", 28).conv_stem.stride == (1, 1)


@pytest.mark.parametrize("arch", ["resnet34", "vit_base", ""])
def test_unknown_arch(arch):
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model(arch, 28)


def test_kd_loss_is_t2_kl_teacher_student():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    y = torch.randint(0, 7, (5,))
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T**2
    assert torch.allclose(L.KDLoss(T)(s, t, y), manual, atol=1e-6)
    assert L.KDLoss(T)(t, t, y).abs() < 1e-6


def test_kd_gradient_pulls_student_towards_teacher():
    t = torch.tensor([[3.0, 0.0, 0.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    L.KDLoss(2.0)(s, t, torch.tensor([0])).backward()
    assert s.grad[0, 0] < 0 < s.grad[0, 1]  # descent raises the teacher's top logit


def test_attention_transfer_formulation():
    torch.manual_seed(0)
    f = torch.randn(4, 8, 6, 6)
    q = L.attention_map(f)
    assert torch.allclose(q.norm(dim=1), torch.ones(4))
    expected = F.normalize(f.pow(2).mean(1).flatten(1), dim=1)
    assert torch.allclose(q, expected)
    at = L.ATLoss()
    assert at([f], [q]) < 1e-10
    g = torch.randn(4, 8, 6, 6)
    assert torch.allclose(at([g], [q]), (L.attention_map(g) - q).pow(2).mean())
    # a smaller student map is compared with the teacher's map pooled to its size
    small = torch.randn(4, 8, 3, 3)
    pooled = F.normalize(F.adaptive_avg_pool2d(f.pow(2).mean(1, keepdim=True), 3).flatten(1), dim=1)
    assert torch.allclose(at([small], [q]), (L.attention_map(small) - pooled).pow(2).mean(), atol=1e-7)


def test_distill_loss_weights():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 7), torch.randn(6, 7), torch.randint(0, 7, (6,))
    ce = torch.nn.CrossEntropyLoss()
    total, parts = L.DistillLoss(ce, KDConfig(alpha=1.0, temperature=4.0))(s, y, t)
    assert torch.allclose(total, ce(s, y))
    total, parts = L.DistillLoss(ce, KDConfig(alpha=0.25, temperature=4.0))(s, y, t)
    assert np.isclose(float(total), 0.25 * parts["ce"] + 0.75 * parts["kd"], atol=1e-6)
    assert parts["kd"] == pytest.approx(float(L.KDLoss(4.0)(s, t, y)))
    assert "at" not in parts  # beta 0: no attention transfer


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(-1)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def dkd_reference(s: np.ndarray, t: np.ndarray, y: np.ndarray, a: float, b: float, T: float) -> float:
    """Zhao et al. (CVPR 2022), eq. 4-5, in float64 as mdistiller writes it: the binary (target, rest)
    probabilities, and the non-target classes by a softmax whose target logit is pushed down by 1000."""
    p_s, p_t = _softmax(s / T), _softmax(t / T)
    gt = np.eye(s.shape[1])[y].astype(bool)
    b_s = np.stack([p_s[gt], (p_s * ~gt).sum(1)], 1)
    b_t = np.stack([p_t[gt], (p_t * ~gt).sum(1)], 1)
    tckd = _kl(b_t, b_s).mean()
    n_s, n_t = _softmax(s / T - 1000.0 * gt), _softmax(t / T - 1000.0 * gt)
    nckd = (n_t * (np.log(n_t + 1e-300) - np.log(n_s + 1e-300))).sum(1).mean()
    return float((a * tckd + b * nckd) * T**2)


def dist_reference(s: np.ndarray, t: np.ndarray, beta: float, gamma: float, T: float) -> float:
    """Huang et al. (NeurIPS 2022) as torchdistill's DISTLoss: 1 - mean Pearson r, per image and per class."""
    p_s, p_t = _softmax(s / T), _softmax(t / T)

    def r(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)).mean())

    return float(T**2 * (beta * (1 - r(p_s, p_t)) + gamma * (1 - r(p_s.T, p_t.T))))


def test_dkd_matches_the_published_formula():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(16, 7)) * 3, rng.normal(size=(16, 7)) * 3
    y = rng.integers(0, 7, 16)
    for a, b, T in ((1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (1.0, 0.0, 2.0)):
        got = L.DKDLoss(a, b, T)(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(y))
        assert float(got) == pytest.approx(dkd_reference(s, t, y, a, b, T), rel=1e-4)
    st = torch.tensor(s, dtype=torch.float32)
    assert float(L.DKDLoss(1.0, 8.0, 4.0)(st, st, torch.tensor(y))) == pytest.approx(0.0, abs=1e-6)


def test_dkd_with_two_classes_is_hinton_kd():
    """Hand check: with two classes the non-target part is one class (NCKD = 0) and TCKD is the full KL."""
    s, t, y = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([0])
    p_t = torch.tensor([1 / (1 + np.exp(-0.25)), 1 - 1 / (1 + np.exp(-0.25))])
    p_s = torch.tensor([1 / (1 + np.exp(-1.5)), 1 - 1 / (1 + np.exp(-1.5))])
    by_hand = float((p_t * (p_t.log() - p_s.log())).sum() * 4)
    assert float(L.DKDLoss(1.0, 8.0, 2.0)(s, t, y)) == pytest.approx(by_hand, rel=1e-5)
    assert float(L.KDLoss(2.0)(s, t, y)) == pytest.approx(by_hand, rel=1e-5)


def test_dist_matches_the_published_formula():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(12, 7)) * 2, rng.normal(size=(12, 7)) * 2
    y = torch.tensor(rng.integers(0, 7, 12))  # DIST does not read the targets
    for beta, gamma, T in ((1.0, 1.0, 1.0), (2.0, 0.5, 4.0)):
        got = L.DISTLoss(beta, gamma, T)(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), y)
        assert float(got) == pytest.approx(dist_reference(s, t, beta, gamma, T), rel=1e-4)
    st = torch.tensor(s, dtype=torch.float32)
    assert float(L.DISTLoss()(st, st, y)) == pytest.approx(0.0, abs=1e-5)


def test_standardized_kd_ignores_the_student_logits_scale_and_shift():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 7), torch.randn(8, 7) * 5, torch.randint(0, 7, (8,))
    z = L.standardize(s)
    assert torch.allclose(z.mean(1), torch.zeros(8), atol=1e-6) and torch.allclose(z.std(1), torch.ones(8), atol=1e-5)
    loss = L.DistillLoss(torch.nn.CrossEntropyLoss(), KDConfig(alpha=0.0, temperature=2.0, standardize=True))
    plain, _ = loss(s, y, t)
    scaled, _ = loss(3.0 * s + 1.5, y, t)
    assert float(plain) == pytest.approx(float(scaled), rel=1e-5)
    manual = L.KDLoss(2.0)(L.standardize(s), L.standardize(t), y)
    assert float(plain) == pytest.approx(float(manual), rel=1e-6)


def test_the_loss_registry_has_every_logit_term():
    assert set(L.LOSSES) == set(config.LOGIT_TERMS)
    assert set(config.KD_MODES) - set(L.LOSSES) == {"none"}


def test_logit_terms_by_name():
    hinton = L.logit_term(KDConfig(mode="hinton", temperature=3.0))
    assert isinstance(hinton, L.KDLoss) and hinton.T == 3.0
    dkd = L.logit_term(KDConfig(mode="dkd", temperature=2.0, dkd_alpha=0.5, dkd_beta=4.0))
    assert isinstance(dkd, L.DKDLoss) and (dkd.alpha, dkd.beta, dkd.T) == (0.5, 4.0, 2.0)
    dist = L.logit_term(KDConfig(mode="dist", temperature=1.0, dist_beta=2.0, dist_gamma=0.5))
    assert isinstance(dist, L.DISTLoss) and (dist.beta, dist.gamma, dist.T) == (2.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="'fitnet'"):  # an unknown mode never reaches the registry
        L.logit_term(KDConfig(mode="fitnet"))
    with pytest.raises(ValueError, match="DKD needs"):
        L.logit_term(KDConfig(mode="dkd", dkd_beta=-1.0))
    with pytest.raises(ValueError, match="'none' has no logit term"):
        L.logit_term(KDConfig(mode="none"))


def test_every_logit_term_takes_the_targets():
    """One call for all: DistillLoss passes (student, teacher, target) to whichever term the mode picks."""
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 7), torch.randn(6, 7), torch.randint(0, 7, (6,))
    ce = torch.nn.CrossEntropyLoss()
    for mode in config.LOGIT_TERMS:
        kd = KDConfig(mode=mode, alpha=0.0)
        total, parts = L.DistillLoss(ce, kd)(s, y, t)
        assert float(total) == pytest.approx(parts["kd"]) and parts["kd"] == float(L.logit_term(kd)(s, t, y))


@pytest.mark.parametrize("build, message", [
    (lambda: L.KDLoss(0.0), "temperature T must be > 0"),
    (lambda: L.DKDLoss(1.0, -1.0, 4.0), "DKD needs"),
    (lambda: L.DKDLoss(1.0, 8.0, -4.0), "DKD needs"),
    (lambda: L.DISTLoss(-1.0, 1.0, 1.0), "DIST needs"),
])
def test_terms_built_directly_refuse_bad_settings(build, message):
    """Built without a KDConfig (as the reference checks do), a term still refuses what KDConfig would."""
    with pytest.raises(ValueError, match=message):
        build()


def test_head_init_shrinks_the_mobile_classifiers():
    default = create_model("mobilenetv2_100", 28).get_classifier().weight.std()
    small = create_model("mobilenetv2_100", 28, head_init_std=HEAD_INIT_STD).get_classifier()
    assert default > 0.15  # timm: uniform in +-1/sqrt(7)
    assert float(small.weight.detach().std()) == pytest.approx(HEAD_INIT_STD, rel=0.05) and float(small.bias.abs().max()) == 0


@pytest.mark.parametrize("alpha, T, beta", [(-0.1, 4, 0), (1.5, 4, 0), (0.5, 0, 0), (0.5, -2, 0), (0.5, 4, -1)])
def test_kd_settings_out_of_range(alpha, T, beta):
    with pytest.raises(ValueError):
        config.check_kd(alpha, T, beta)


def test_focal_with_gamma_zero_is_ce_and_down_weights_easy_examples():
    torch.manual_seed(0)
    s, y = torch.randn(8, 7), torch.randint(0, 7, (8,))
    assert torch.allclose(L.FocalLoss(0.0)(s, y), F.cross_entropy(s, y), atol=1e-6)
    assert L.FocalLoss(2.0)(s, y) < F.cross_entropy(s, y)


def test_class_balanced_weights_effective_number():
    counts = np.array([10, 100, 1000])
    w = L.class_balanced_weights(counts, beta=0.99)
    raw = (1 - 0.99) / (1 - 0.99 ** counts)
    assert np.allclose(w.numpy(), raw / raw.mean(), rtol=1e-6)
    assert w[0] > w[1] > w[2]
    with pytest.raises(ValueError, match="at least one"):
        L.class_balanced_weights(np.array([3, 0]))
