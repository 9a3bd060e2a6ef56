"""Independent NumPy references of the SSL losses, written from the papers and the official code.

Plain float64 loops over samples and crops, no stop-gradients (a reference has no autodiff: the
tests take finite differences of these functions with the stop-gradient inputs held fixed). SwAV's
Sinkhorn is the literal official algorithm, ``exp(scores / eps)`` without any shift.
"""

from __future__ import annotations

import math

import numpy as np


def normalize(v: np.ndarray) -> np.ndarray:
    """``F.normalize`` of one vector: ``v / max(||v||, 1e-12)``."""
    return v / max(math.sqrt(float(np.dot(v, v))), 1e-12)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(normalize(a), normalize(b)))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Of one vector."""
    m = max(x)
    return x - m - math.log(sum(math.exp(v - m) for v in x))


def cross_entropy(target: np.ndarray, logits: np.ndarray) -> float:
    """``-sum_k target_k log_softmax(logits)_k`` of one sample."""
    return -float(np.dot(target, log_softmax(logits)))


def info_nce(q, k, queue, temperature):
    """MoCo v2 ``builder.py``: logits ``[q.k, q.queue_j] / T``, label 0; no queue: the other keys."""
    n = len(q)
    total = 0.0
    for i in range(n):
        qi, ki = normalize(q[i]), normalize(k[i])
        negatives = list(queue) if queue is not None else [normalize(k[j]) for j in range(n) if j != i]
        logits = np.array([qi @ ki] + [qi @ neg for neg in negatives]) / temperature
        total -= log_softmax(logits)[0]
    return total / n


def nt_xent(z1, z2, temperature):
    """SimCLR Eq. 1: l(i, j) = -log(exp(s_ij / T) / sum_{k != i} exp(s_ik / T)), mean over 2N."""
    z = [normalize(v) for v in list(z1) + list(z2)]
    m, n = len(z), len(z1)
    total = 0.0
    for i in range(m):
        j = (i + n) % m
        denom = sum(math.exp(z[i] @ z[k] / temperature) for k in range(m) if k != i)
        total -= math.log(math.exp(z[i] @ z[j] / temperature) / denom)
    return total / m


def simsiam(p1, p2, z1, z2):
    """0.5 D(p1, z2) + 0.5 D(p2, z1) with D(p, z) = -mean_n cos(p_n, z_n)."""
    n = len(p1)
    d12 = -sum(cos(p1[i], z2[i]) for i in range(n)) / n
    d21 = -sum(cos(p2[i], z1[i]) for i in range(n)) / n
    return 0.5 * d12 + 0.5 * d21


def byol(p1, p2, t1, t2):
    """mean_n ||p1n/|p1n| - t2n/|t2n| ||^2 + ||p2n/|p2n| - t1n/|t1n| ||^2 (= 2 - 2 cos each)."""
    total = 0.0
    for i in range(len(p1)):
        total += np.sum((normalize(p1[i]) - normalize(t2[i])) ** 2)
        total += np.sum((normalize(p2[i]) - normalize(t1[i])) ** 2)
    return total / len(p1)


def vicreg(x, y, sim_coeff, std_coeff, cov_coeff):
    """facebookresearch/vicreg main_vicreg.py ``VICReg.forward``, elementwise."""
    n, d = x.shape
    repr_loss = sum((x[i, j] - y[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def std_and_cov(z):
        mu = [sum(z[i, j] for i in range(n)) / n for j in range(d)]
        c = [[z[i, j] - mu[j] for j in range(d)] for i in range(n)]
        hinge = 0.0
        for j in range(d):
            var = sum(c[i][j] ** 2 for i in range(n)) / (n - 1)  # torch.var: unbiased
            hinge += max(0.0, 1.0 - math.sqrt(var + 1e-4))
        off = 0.0
        for a in range(d):
            for b in range(d):
                if a != b:
                    off += (sum(c[i][a] * c[i][b] for i in range(n)) / (n - 1)) ** 2
        return hinge / d, off / d

    std_x, cov_x = std_and_cov(x)
    std_y, cov_y = std_and_cov(y)
    std_loss = std_x / 2 + std_y / 2
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * (cov_x + cov_y)


def sinkhorn(out, epsilon, n_iters):
    """facebookresearch/swav ``distributed_sinkhorn`` verbatim (one process): returns (B, K)."""
    q = np.exp(out / epsilon).T  # K x B
    b, k = q.shape[1], q.shape[0]
    q = q / np.sum(q)
    for _ in range(n_iters):
        sum_of_rows = np.sum(q, axis=1, keepdims=True)
        q = q / sum_of_rows
        q = q / k
        q = q / np.sum(q, axis=0, keepdims=True)
        q = q / b
    q = q * b
    return q.T


def swav(scores, temperature, epsilon, n_iters, n_assign, queue_scores=None, codes=None):
    """main_swav.py's loss loop. ``codes``: the per-assigned-crop codes to use instead (frozen)."""
    n_crops = len(scores)
    bs = len(scores[0])
    loss = 0.0
    for i in range(n_assign):
        if codes is not None:
            q = codes[i]
        else:
            out = scores[i]
            if queue_scores is not None:
                out = np.concatenate((queue_scores[i], out))
            q = sinkhorn(out, epsilon, n_iters)[-bs:]
        subloss = 0.0
        for v in np.delete(np.arange(n_crops), i):
            x = scores[v] / temperature
            subloss -= sum(-cross_entropy(q[r], x[r]) for r in range(bs)) / bs
        loss += subloss / (n_crops - 1)
    return loss / n_assign


def softmax(x):
    return np.exp(log_softmax(x))


def dino(student_out, teacher_out, center, student_temp, teacher_temp):
    """facebookresearch/dino main_dino.py ``DINOLoss.forward``."""
    center = np.reshape(center, -1)
    total, n_terms = 0.0, 0
    for iq, t in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            per_sample = [
                cross_entropy(softmax((t[r] - center) / teacher_temp), s[r] / student_temp) for r in range(len(t))
            ]
            total += sum(per_sample) / len(per_sample)
            n_terms += 1
    return total / n_terms


def dino_teacher_entropy(teacher_out, center, teacher_temp):
    """Mean over teacher crops and samples of -sum p log p, p = softmax((t - center) / T)."""
    center = np.reshape(center, -1)
    rows = [softmax((r - center) / teacher_temp) for t in teacher_out for r in t]
    return float(np.mean([-np.sum(p * np.log(p)) for p in rows]))


def dino_center(center, teacher_out, momentum):
    """``DINOLoss.update_center``: sum of cat(teacher outputs) / its length, EMA with ``momentum``."""
    rows = [r for t in teacher_out for r in t]
    batch_center = sum(rows) / len(rows)
    return center * momentum + batch_center * (1 - momentum)


def mocov3(q1, q2, k1, k2, temperature):
    """MoCo v3 ``builder.py``: ctr(q1, k2) + ctr(q2, k1), ctr = CE(q k^T / T, arange(N)) * 2T."""

    def ctr(q, k):
        n = len(q)
        total = 0.0
        for i in range(n):
            qi = normalize(q[i])
            logits = np.array([qi @ normalize(k[j]) for j in range(n)]) / temperature
            total -= log_softmax(logits)[i]
        return total / n * 2 * temperature

    return ctr(q1, k2) + ctr(q2, k1)


def mae(pred, imgs_nchw, mask, patch, norm_pix):
    """MAE ``models_mae.py``: ``patchify`` of NCHW images (einsum 'nchpwq->nhwpqc'), optional
    per-patch normalisation with the unbiased variance, MSE per patch, mean over masked patches."""
    n, c, h, w = imgs_nchw.shape
    gh, gw = h // patch, w // patch
    x = imgs_nchw.reshape(n, c, gh, patch, gw, patch)
    target = np.einsum("nchpwq->nhwpqc", x).reshape(n, gh * gw, patch * patch * c)
    num = den = 0.0
    for i in range(n):
        for j in range(gh * gw):
            t = target[i, j].copy()
            if norm_pix:
                mu = sum(t) / len(t)
                var = sum((v - mu) ** 2 for v in t) / (len(t) - 1)
                t = (t - mu) / math.sqrt(var + 1e-6)
            err = sum((a - b) ** 2 for a, b in zip(pred[i, j], t)) / len(t)
            num += err * mask[i, j]
            den += mask[i, j]
    return num / den
