"""Model factory and loss terms, checked against direct formulas."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekd import info
from edgekd import losses as L
from edgekd.models import create_model, default_stem_stride, forward_with_stages


@pytest.mark.parametrize("arch", info.ARCHS)
@pytest.mark.parametrize("size", [28, 64])
def test_every_arch_classifies_small_inputs(arch, size):
    model = create_model(arch, size).eval()
    x = torch.randn(2, 3, size, size)
    logits, feats = forward_with_stages(model, x)
    assert logits.shape == (2, info.NUM_CLASSES)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert min(f.shape[-1] for f in feats) >= 2  # small-input stem keeps maps above 1x1


def test_stage_maps_match_across_teacher_and_students():
    x = torch.randn(1, 3, 64, 64)
    sides = {a: [f.shape[-2:] for f in forward_with_stages(create_model(a, 64).eval(), x)[1]] for a in info.ARCHS}
    assert len({tuple(v) for v in sides.values()}) == 1, sides


def test_stem_stride_rule():
    assert default_stem_stride(28) == default_stem_stride(64) == 1
    assert default_stem_stride(128) == default_stem_stride(224) == 2
    assert create_model("resnet18", 28, stem_stride=2).conv1.stride == (2, 2)
    assert create_model("efficientnet_b0", 28).conv_stem.stride == (1, 1)


@pytest.mark.parametrize("arch", ["resnet34", "vit_base", ""])
def test_unknown_arch(arch):
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model(arch, 28)


def test_pretrained_without_network_fails_clearly():
    code = "from edgekd.models import create_model; create_model('resnet18', 28, pretrained=True)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0
    assert "PretrainedUnavailable" in res.stderr and "could not be loaded" in res.stderr


def test_kd_loss_is_t2_kl_teacher_student():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    T = 3.0
    p_t = F.softmax(t / T, 1)
    manual = (p_t * (p_t.log() - F.log_softmax(s / T, 1))).sum(1).mean() * T**2
    assert torch.allclose(L.KDLoss(T)(s, t), manual, atol=1e-6)
    assert L.KDLoss(T)(t, t).abs() < 1e-6


def test_kd_gradient_pulls_student_towards_teacher():
    t = torch.tensor([[3.0, 0.0, 0.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    L.KDLoss(2.0)(s, t).backward()
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
    total, parts = L.DistillLoss(ce, 1.0, 4.0, 0.0)(s, y, t)
    assert torch.allclose(total, ce(s, y))
    total, parts = L.DistillLoss(ce, 0.25, 4.0, 0.0)(s, y, t)
    assert np.isclose(float(total), 0.25 * parts["ce"] + 0.75 * parts["kd"], atol=1e-6)


@pytest.mark.parametrize("alpha, T, beta", [(-0.1, 4, 0), (1.5, 4, 0), (0.5, 0, 0), (0.5, -2, 0), (0.5, 4, -1)])
def test_kd_settings_out_of_range(alpha, T, beta):
    with pytest.raises(ValueError):
        L.check_kd(alpha, T, beta)


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
