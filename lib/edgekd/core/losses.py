"""Loss terms as small composable modules (after torchdistill): CE variants, logit distillation, attention transfer.

Student objective: ``alpha * CE + (1 - alpha) * KD + beta * AT``, where the logit term KD is one of

* ``hinton``: ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (Hinton et al. 2015);
* ``dkd``: decoupled KD (Zhao et al., CVPR 2022), ``T^2 * (a * TCKD + b * NCKD)``: the binary KL of
  target vs rest, plus the KL between the distributions over the non-target classes;
* ``dist``: DIST (Huang et al., NeurIPS 2022), ``T^2 * (b * (1 - inter) + g * (1 - intra))`` with
  inter/intra the mean Pearson correlation of student and teacher probabilities across classes
  (per image) and across the batch (per class);

and ``standardize`` (Sun et al., CVPR 2024) z-scores each image's logits (over classes) of both
networks before a KL-based term, so the student matches the teacher's logit *shape*, not its scale.

Attention transfer follows Zagoruyko & Komodakis (ICLR 2017), activation-based, in the form
of their reference code: for a feature map A (N, C, H, W) the attention map is
``Q = normalize(mean_c(A^2).flatten())`` (p = 2, L2-normalised); the AT term for matched stages j is
``sum_j mean((Q_s_j - Q_t_j)^2)``, so ``beta`` plays the role of the paper code's ``beta / 2``
(their 1e3 corresponds to ``beta = 500`` here). When a stage's spatial sizes differ the larger map is
average-pooled to the smaller before normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.core.config import CE_KINDS, KDConfig


def class_balanced_weights(counts: np.ndarray, beta: float = 0.999) -> torch.Tensor:
    """Class weights from the effective number of samples (Cui et al., CVPR 2019), mean 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if (counts <= 0).any():
        raise ValueError(f"every class needs at least one training image, got counts {counts.tolist()}")
    w = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Multiclass focal loss (Lin et al. 2017): mean of ``-w_y (1 - p_y)^gamma log p_y``."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - logp.exp()) ** self.gamma) * logp
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


def make_ce(
    kind: str = "ce",
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """The hard-label term: plain/label-smoothed CE or focal, optionally class-weighted."""
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)
    if kind == "focal":
        if label_smoothing:
            raise ValueError("label smoothing is not defined for the focal loss here; set label_smoothing: 0")
        return FocalLoss(focal_gamma, class_weights)
    raise ValueError(f"loss {kind!r} is not one of {CE_KINDS}")


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-row z-score of logits over classes: ``(z - mean(z)) / (std(z) + eps)`` (sample std, as Sun et al.)."""
    z = logits.float()
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + eps)


class LogitTerm(nn.Module):
    """A logit-distillation term: ``forward(student_logits, teacher_logits, target)`` -> a scalar loss.

    Every term takes the targets (only DKD reads them) and is built from a validated :class:`KDConfig` by
    :meth:`from_config`. Its constructor still refuses out-of-range settings: the terms are also built
    directly (tests, reference checks), where no :class:`KDConfig` stands in front of them.
    """

    @classmethod
    def from_config(cls, kd: KDConfig) -> LogitTerm:
        """The term with the settings of ``kd``."""
        raise NotImplementedError

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class KDLoss(LogitTerm):
    """Hinton KD: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, averaged over the batch (``target`` unused)."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature T must be > 0, got {temperature}")
        self.T = float(temperature)

    @classmethod
    def from_config(cls, kd: KDConfig) -> KDLoss:
        return cls(kd.temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p_s = F.log_softmax(student_logits.float() / self.T, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float() / self.T, dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * self.T**2


class DKDLoss(LogitTerm):
    """Decoupled KD: ``T^2 * (alpha * TCKD + beta * NCKD)``, averaged over the batch.

    TCKD is the KL between the binary distributions (p_target, 1 - p_target) of teacher and student;
    NCKD the KL between their distributions over the non-target classes (softmax with the target
    class removed). Both at temperature T. Computed in log space, so no probability is clamped.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0 or alpha < 0 or beta < 0:
            raise ValueError(f"DKD needs T > 0 and alpha, beta >= 0, got T={temperature}, alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.T = float(alpha), float(beta), float(temperature)

    @classmethod
    def from_config(cls, kd: KDConfig) -> DKDLoss:
        return cls(kd.dkd_alpha, kd.dkd_beta, kd.temperature)

    def _parts(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log of (p_target, 1 - p_target) (N, 2) and the log-softmax over non-target classes (N, C)."""
        z = logits.float() / self.T
        gt = F.one_hot(target, z.shape[1]).bool()
        log_all = torch.logsumexp(z, 1, keepdim=True)
        log_gt = z.gather(1, target[:, None]) - log_all
        rest = z.masked_fill(gt, float("-inf"))
        log_rest = torch.logsumexp(rest, 1, keepdim=True)
        binary = torch.cat([log_gt, log_rest - log_all], 1)
        return binary, (rest - log_rest).masked_fill(gt, 0.0)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bin_s, non_s = self._parts(student_logits, target)
        bin_t, non_t = self._parts(teacher_logits, target)
        tckd = (bin_t.exp() * (bin_t - bin_s)).sum(1).mean()
        nckd = (non_t.exp() * (non_t - non_s)).sum(1).mean()  # the target column is 0 in both: no term
        return (self.alpha * tckd + self.beta * nckd) * self.T**2


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DISTLoss(LogitTerm):
    """DIST: ``T^2 * (beta * (1 - inter) + gamma * (1 - intra))`` on softmax(logits / T) (``target`` unused).

    ``inter``: mean over images of the Pearson correlation between the student's and the teacher's
    class probabilities; ``intra``: mean over classes of their correlation across the batch.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0 or beta < 0 or gamma < 0:
            raise ValueError(f"DIST needs T > 0 and beta, gamma >= 0, got T={temperature}, beta={beta}, gamma={gamma}")
        self.beta, self.gamma, self.T = float(beta), float(gamma), float(temperature)

    @classmethod
    def from_config(cls, kd: KDConfig) -> DISTLoss:
        return cls(kd.dist_beta, kd.dist_gamma, kd.temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_s = F.softmax(student_logits.float() / self.T, 1)
        p_t = F.softmax(teacher_logits.float() / self.T, 1)
        inter = 1.0 - _pearson_rows(p_s, p_t).mean()
        intra = 1.0 - _pearson_rows(p_s.T, p_t.T).mean()
        return (self.beta * inter + self.gamma * intra) * self.T**2


def attention_map(feature: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """L2-normalised spatial attention ``mean_c(A^2)`` (N, H*W), pooled to ``size`` x ``size`` if given."""
    a = feature.float().pow(2).mean(1, keepdim=True)
    if size is not None and a.shape[-1] != size:
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


class ATLoss(nn.Module):
    """Attention transfer over matched stages: ``sum_j mean((Q_s_j - Q_t_j)^2)``."""

    def forward(self, student_feats: list[torch.Tensor], teacher_maps: list[torch.Tensor]) -> torch.Tensor:
        if len(student_feats) != len(teacher_maps):
            raise ValueError(f"{len(student_feats)} student stages vs {len(teacher_maps)} teacher stages")
        total = student_feats[0].new_zeros((), dtype=torch.float32)
        for f_s, q_t in zip(student_feats, teacher_maps, strict=True):
            t_side = int(round(q_t.shape[1] ** 0.5))
            side = min(t_side, f_s.shape[-1])
            q_s = attention_map(f_s, side)
            if t_side != side:  # pooling is linear, so pooling the normalised map then renormalising is exact
                q_t = F.normalize(F.adaptive_avg_pool2d(q_t.float().view(-1, 1, t_side, t_side), side).flatten(1), dim=1)
            total = total + (q_s - q_t.float()).pow(2).mean()
        return total


#: The logit-distillation terms by KD mode: exactly :data:`edgekd.core.config.LOGIT_TERMS`.
LOSSES: dict[str, type[LogitTerm]] = {"hinton": KDLoss, "dkd": DKDLoss, "dist": DISTLoss}


def logit_term(kd: KDConfig) -> LogitTerm:
    """The logit-distillation term of a KD setting (:data:`LOSSES`; see the module docstring)."""
    if kd.mode not in LOSSES:
        raise ValueError(f"kd mode {kd.mode!r} has no logit term; the terms are {tuple(LOSSES)}")
    return LOSSES[kd.mode].from_config(kd)


class DistillLoss(nn.Module):
    """``alpha * CE + (1 - alpha) * KD + beta * AT`` of a KD setting; returns the total and its parts.

    The settings come from ``kd``, validated by :class:`KDConfig`: the logit term is :func:`logit_term`'s;
    with ``standardize`` both networks' logits are z-scored per image (:func:`standardize`) before it.
    """

    def __init__(self, ce: nn.Module, kd: KDConfig) -> None:
        super().__init__()
        self.ce, self.kd = ce, logit_term(kd)
        self.alpha, self.beta, self.standardize = float(kd.alpha), float(kd.beta), bool(kd.standardize)
        self.at = ATLoss()

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_feats: list[torch.Tensor] | None = None,
        teacher_maps: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ce = self.ce(logits, target)
        s, t = (standardize(logits), standardize(teacher_logits)) if self.standardize else (logits, teacher_logits)
        kd = self.kd(s, t, target)
        total = self.alpha * ce + (1.0 - self.alpha) * kd
        parts = {"ce": ce.item(), "kd": kd.item()}
        if self.beta > 0:
            at = self.at(student_feats or [], teacher_maps or [])
            total = total + self.beta * at
            parts["at"] = at.item()
        return total, parts
