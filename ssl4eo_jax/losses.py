"""Pure loss functions of the SSL methods, on batch-global arrays.

No state, no axis names: under ``jax.jit`` with batch-sharded inputs, means over the batch axis are
already global (XLA inserts the all-reduces), so every loss here is the loss of the global batch,
whatever the number of devices. Normalisations, temperatures and stop-gradients follow the
official code of each paper; each function is tested against an independent NumPy derivation.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

BN_EPSILON = 1e-5
NORM_EPSILON = 1e-12  # torch.nn.functional.normalize's floor on the norm
_sg = jax.lax.stop_gradient


def _promote(x: jnp.ndarray) -> jnp.ndarray:
    """Computes in float32 at least: bf16 -> f32, f64 (x64 mode) stays f64."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = NORM_EPSILON) -> jnp.ndarray:
    """``x / max(||x||, eps)`` along ``axis``, as ``F.normalize``; its gradient is finite at 0."""
    x = _promote(x)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))


def cosine(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Row-wise cosine similarity of (N, D) arrays, with the norms floored at ``NORM_EPSILON``."""
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def _soft_cross_entropy(targets: jnp.ndarray, logits: jnp.ndarray) -> jnp.ndarray:
    """Mean over the batch of ``-sum_k targets_k log_softmax(logits)_k``."""
    return jnp.mean(-jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def batch_standardize(z: jnp.ndarray, eps: float = BN_EPSILON) -> jnp.ndarray:
    """Per-dimension standardisation over the batch with the biased variance.

    This is ``BatchNorm1d(affine=False)`` in training mode, as in the official Barlow Twins code.
    """
    z = _promote(z)
    mean = jnp.mean(z, axis=0)
    var = jnp.mean(jnp.square(z - mean), axis=0)
    return (z - mean) / jnp.sqrt(var + eps)


def barlow_twins_terms(z1: jnp.ndarray, z2: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The invariance (on-diagonal) and redundancy (off-diagonal) terms of Barlow Twins."""
    n = z1.shape[0]
    c = batch_standardize(z1).T @ batch_standardize(z2) / n
    diag = jnp.diagonal(c)
    on_diag = jnp.sum(jnp.square(diag - 1.0))
    off_diag = jnp.sum(jnp.square(c * (1.0 - jnp.eye(c.shape[0], dtype=c.dtype))))
    return on_diag, off_diag


def barlow_twins(z1: jnp.ndarray, z2: jnp.ndarray, lambd: float = 0.0051) -> jnp.ndarray:
    """Barlow Twins (Zbontar et al., 2021): sum_i (1 - C_ii)^2 + lambda sum_{i!=j} C_ij^2.

    ``C`` is the cross-correlation of the two views' embeddings (N, D), each standardised per
    dimension over the (global) batch, divided by N. The reference code divides by
    ``batch_size * 4`` with the per-GPU batch and 4 GPUs hard-coded, which is this same N.
    """
    on_diag, off_diag = barlow_twins_terms(z1, z2)
    return on_diag + lambd * off_diag


def info_nce(
    q: jnp.ndarray, k: jnp.ndarray, queue: jnp.ndarray | None = None, temperature: float = 0.2
) -> jnp.ndarray:
    """MoCo v2's InfoNCE (facebookresearch/moco ``builder.py``).

    ``q``, ``k`` (N, D) are L2-normalised here; ``k`` and ``queue`` are stop-gradient (the official
    key encoder runs under ``no_grad``, its queue is a detached buffer). ``queue`` (K, D) holds keys
    that are *already* normalised (the official enqueues normalised keys; stored there as (D, K)).
    Logits ``[q.k, q.queue^T] / T``, cross-entropy with the positive at index 0, mean over N.
    Without a queue (a convention of ours; MoCo always has one) the negatives are the other N - 1
    keys of the batch: MoCo v3's in-batch loss, without its ``2T`` factor.
    """
    q = l2_normalize(q)
    k = _sg(l2_normalize(k))
    if queue is None:
        logits = q @ k.T / temperature  # positives on the diagonal
        return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)
    logits = jnp.concatenate([positive, q @ _sg(_promote(queue)).T], axis=1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])


def nt_xent(z1: jnp.ndarray, z2: jnp.ndarray, temperature: float = 0.5) -> jnp.ndarray:
    """SimCLR's NT-Xent (Chen et al., 2020, Eq. 1), the 2N-way loss over both views.

    The 2N x 2N cosine similarities over T, self-pairs excluded, the other view as the positive,
    mean over the 2N anchors as in the paper. The official code (google-research/simclr
    ``objective.py``) adds the means of the two views' N anchors, i.e. twice this value; it masks
    self-pairs with ``-1e9``, here they are excluded exactly.
    """
    n = z1.shape[0]
    z = l2_normalize(jnp.concatenate([z1, z2], axis=0))
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)
    partner = jnp.roll(jnp.arange(2 * n), n)  # i <-> i + N
    log_prob = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_prob, partner[:, None], axis=1))


def simsiam(p1: jnp.ndarray, p2: jnp.ndarray, z1: jnp.ndarray, z2: jnp.ndarray) -> jnp.ndarray:
    """SimSiam (facebookresearch/simsiam): ``-0.5 (mean cos(p1, sg z2) + mean cos(p2, sg z1))``.

    The official ``nn.CosineSimilarity`` floors the product of the norms at 1e-8; here each norm is
    floored at 1e-12 (``F.normalize``), which only differs for vanishing vectors.
    """
    return -0.5 * (jnp.mean(cosine(p1, _sg(z2))) + jnp.mean(cosine(p2, _sg(z1))))


def byol(p1: jnp.ndarray, p2: jnp.ndarray, t1: jnp.ndarray, t2: jnp.ndarray) -> jnp.ndarray:
    """BYOL (deepmind/deepmind-research ``byol``): mean over the batch of the symmetrised
    normalised MSE, ``(2 - 2 cos(p1, sg t2)) + (2 - 2 cos(p2, sg t1))``."""
    return jnp.mean((2.0 - 2.0 * cosine(p1, _sg(t2))) + (2.0 - 2.0 * cosine(p2, _sg(t1))))


def _vicreg_regularisers(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``mean(relu(1 - std))`` and ``sum(offdiag(cov)^2) / D`` of one view (N, D)."""
    n, d = x.shape
    x = x - jnp.mean(x, axis=0)
    std = jnp.sqrt(jnp.sum(jnp.square(x), axis=0) / (n - 1) + 1e-4)
    cov = x.T @ x / (n - 1)
    off_diag = cov * (1.0 - jnp.eye(d, dtype=cov.dtype))
    return jnp.mean(jax.nn.relu(1.0 - std)), jnp.sum(jnp.square(off_diag)) / d


def vicreg(
    z1: jnp.ndarray, z2: jnp.ndarray, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> jnp.ndarray:
    """VICReg (facebookresearch/vicreg ``main_vicreg.py``).

    ``sim * MSE(z1, z2) + std * (hinge(z1) + hinge(z2)) / 2 + cov * (c(z1) + c(z2))``, where the
    hinge is ``mean(relu(1 - sqrt(var + 1e-4)))`` with the unbiased variance over the batch and
    ``c`` the squared off-diagonal covariances (``x^T x / (N - 1)`` of the centred view) over D.
    """
    z1, z2 = _promote(z1), _promote(z2)
    repr_loss = jnp.mean(jnp.square(z1 - z2))
    std1, cov1 = _vicreg_regularisers(z1)
    std2, cov2 = _vicreg_regularisers(z2)
    return sim_coeff * repr_loss + std_coeff * (std1 / 2 + std2 / 2) + cov_coeff * (cov1 + cov2)


def sinkhorn(scores: jnp.ndarray, epsilon: float = 0.05, n_iters: int = 3) -> jnp.ndarray:
    """SwAV's codes: facebookresearch/swav ``distributed_sinkhorn``, stop-gradient.

    ``scores`` (B, K). The official works on ``Q = exp(scores / eps)^T`` (K, B); here Q is kept as
    (B, K), so its "rows" (prototypes) are our columns. Q is scaled to sum to 1, then each
    iteration makes every prototype's total 1/K and then every sample's total 1/B; finally
    ``Q *= B``: every returned row (sample) sums to 1. The global maximum is subtracted before the
    exponential (the official does not): a constant factor that the first normalisation cancels,
    so the codes are the official's but cannot overflow. Sums over the batch are global under jit.
    """
    out = _sg(_promote(scores))
    q = jnp.exp((out - jnp.max(out)) / epsilon)
    b, k = q.shape
    q = q / jnp.sum(q)
    for _ in range(n_iters):
        q = q / jnp.sum(q, axis=0, keepdims=True) / k  # each prototype: 1/K
        q = q / jnp.sum(q, axis=1, keepdims=True) / b  # each sample: 1/B
    return q * b


def swav(
    scores: Sequence[jnp.ndarray],
    temperature: float = 0.1,
    epsilon: float = 0.05,
    n_iters: int = 3,
    n_assign: int = 2,
    queue_scores: Sequence[jnp.ndarray] | None = None,
) -> jnp.ndarray:
    """SwAV's swapped prediction (facebookresearch/swav ``main_swav.py``).

    ``scores``: one (N, K) prototype-score array per crop, the first ``n_assign`` used for
    assignment. For each such crop i, its codes are ``sinkhorn`` of its scores, with
    ``queue_scores[i]`` (Q, K) prepended when given (the official ``cat((queue @ prototypes, out))``)
    and only the crop's own N rows kept (the official ``[-bs:]``: the last ones). The sub-loss is the
    mean over the other crops v of ``-mean(sum(codes * log_softmax(scores_v / T)))``; the loss is
    the mean over assigned crops. The codes are stop-gradient (official: ``no_grad``).
    """
    n_crops = len(scores)
    if not 1 <= n_assign <= n_crops or n_crops < 2:
        raise ValueError(f"swav needs 2+ crops and 1 <= n_assign <= {n_crops}, got n_assign={n_assign}")
    loss = 0.0
    for i in range(n_assign):
        out = _promote(scores[i])
        if queue_scores is not None:
            out = jnp.concatenate([_promote(queue_scores[i]), out], axis=0)
        codes = sinkhorn(out, epsilon, n_iters)[-scores[i].shape[0] :]
        subloss = sum(_soft_cross_entropy(codes, _promote(scores[v]) / temperature) for v in range(n_crops) if v != i)
        loss += subloss / (n_crops - 1)
    return loss / n_assign


def dino(
    student_out: Sequence[jnp.ndarray],
    teacher_out: Sequence[jnp.ndarray],
    center: jnp.ndarray,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> jnp.ndarray:
    """DINO's cross-entropy (facebookresearch/dino ``main_dino.py``, ``DINOLoss.forward``).

    Lists of (N, K) head outputs per crop, the teacher's being the global crops (the first crops
    of the student). Teacher: ``softmax((t - center) / teacher_temp)``, stop-gradient (as is
    ``center``); student: ``log_softmax(s / student_temp)``. Every teacher crop iq against every
    student crop v != iq, each term a mean over the batch; the loss is the mean of the terms.
    """
    center = _promote(center)
    targets = [_sg(jax.nn.softmax((_promote(t) - center) / teacher_temp, axis=-1)) for t in teacher_out]
    terms = [
        _soft_cross_entropy(q, _promote(s) / student_temp)
        for iq, q in enumerate(targets)
        for v, s in enumerate(student_out)
        if v != iq
    ]
    return sum(terms) / len(terms)


def dino_teacher_entropy(teacher_out: Sequence[jnp.ndarray], center: jnp.ndarray, teacher_temp: float = 0.04
                         ) -> jnp.ndarray:
    """The mean entropy of DINO's teacher targets ``softmax((t - center) / teacher_temp)``, stop-gradient.

    Every teacher crop meets the same number of student crops in ``dino``, so ``dino(...) - this``
    is the mean KL divergence from the targets to the student: the paper's two collapse signals
    (Caron et al. 2021, Fig. 7): the entropy reaches log K under uniform collapse, the KL 0 under
    either collapse.
    """
    center = _promote(center)
    entropies = []
    for t in teacher_out:
        logp = jax.nn.log_softmax((_promote(t) - center) / teacher_temp, axis=-1)
        entropies.append(jnp.mean(-jnp.sum(jnp.exp(logp) * logp, axis=-1)))
    return _sg(sum(entropies) / len(entropies))


def dino_center(center: jnp.ndarray, teacher_out: Sequence[jnp.ndarray], momentum: float = 0.9) -> jnp.ndarray:
    """DINO's centre update (``DINOLoss.update_center``), stop-gradient, in ``center``'s dtype.

    ``center * m + (1 - m) * mean(teacher outputs of all global crops over the global batch)``;
    ``center`` is (K,) or (1, K) (the official shape) and the result keeps its shape.
    """
    center = jnp.asarray(center)
    batch_center = jnp.mean(jnp.concatenate([_promote(t) for t in teacher_out], axis=0), axis=0)
    new = _promote(center) * momentum + batch_center * (1.0 - momentum)
    return _sg(new).astype(center.dtype)


def mocov3_contrastive(q: jnp.ndarray, k: jnp.ndarray, temperature: float = 0.2) -> jnp.ndarray:
    """MoCo v3's ``contrastive_loss`` (facebookresearch/moco-v3 ``moco/builder.py``): the queries
    (N, D) and the keys (stop-gradient) L2-normalised, logits ``q k^T / T`` over the global batch's
    keys (the official ``concat_all_gather``), the positive on the diagonal, cross-entropy times
    ``2 T``."""
    return 2.0 * temperature * info_nce(q, k, None, temperature)


def mocov3(q1: jnp.ndarray, q2: jnp.ndarray, k1: jnp.ndarray, k2: jnp.ndarray, temperature: float = 0.2
           ) -> jnp.ndarray:
    """MoCo v3's symmetric loss: ``contrastive(q1, k2) + contrastive(q2, k1)`` (``MoCo.forward``)."""
    return mocov3_contrastive(q1, k2, temperature) + mocov3_contrastive(q2, k1, temperature)


def patchify(images: jnp.ndarray, patch: int) -> jnp.ndarray:
    """(N, H, W, C) -> (N, L, p*p*C) patches in row-major order, each flattened as (row, column,
    channel): MAE's ``patchify`` (``einsum('nchpwq->nhwpqc')``) for channels-last images."""
    n, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"Images of {h}x{w} px do not split into {patch} px patches.")
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    return jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def mae(pred: jnp.ndarray, target: jnp.ndarray, mask: jnp.ndarray, norm_pix: bool = True) -> jnp.ndarray:
    """MAE's ``forward_loss`` (facebookresearch/mae ``models_mae.py``): the mean squared error per
    patch between the decoder's prediction ``pred`` (N, L, P) and the patchified images ``target``
    (N, L, P), averaged over the masked patches only (``mask`` (N, L): 1 masked, 0 visible). With
    ``norm_pix`` (``--norm_pix_loss``) each target patch is standardised by its own mean and
    *unbiased* variance (``target.var(dim=-1)``), ``(t - mean) / (var + 1e-6) ** 0.5``."""
    pred, target, mask = _promote(pred), _sg(_promote(target)), _sg(_promote(mask))
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.sum(jnp.square(target - mean), axis=-1, keepdims=True) / (target.shape[-1] - 1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)
