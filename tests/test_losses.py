"""The losses against independent NumPy implementations of the papers and official code.

Values in float64 to rtol 1e-6; gradients against central finite differences of the NumPy
references, with the stop-gradient inputs held fixed (and their JAX gradients exactly zero).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_losses as ref
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4eo_jax import losses, sharding


def numpy_barlow_twins(z1: np.ndarray, z2: np.ndarray, lambd: float) -> float:
    """Zbontar et al. 2021, Eq. 1-2, with BatchNorm1d(affine=False) standardisation (eps 1e-5)."""
    n, d = z1.shape

    def bn(z):
        mu = z.sum(0) / n
        var = ((z - mu) ** 2).sum(0) / n  # biased, as BatchNorm in training mode
        return (z - mu) / np.sqrt(var + 1e-5)

    a, b = bn(z1), bn(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


@pytest.mark.parametrize("n,d,lambd", [(8, 5, 0.0051), (16, 7, 0.1), (5, 12, 1.0)])
def test_barlow_twins_matches_numpy(x64, n, d, lambd):
    rng = np.random.default_rng(n * d)
    z1 = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
    z2 = 0.5 * z1 + rng.normal(size=(n, d))
    expected = numpy_barlow_twins(z1, z2, lambd)
    got = losses.barlow_twins(jnp.asarray(z1, jnp.float64), jnp.asarray(z2, jnp.float64), lambd)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_barlow_twins_properties():
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    # Perfectly correlated, decorrelated dimensions: near-zero invariance term.
    on, _ = losses.barlow_twins_terms(z, 3.0 * z + 1.0)
    assert float(on) < 1e-3
    # Independent views: C ~ 0, the invariance term is ~D.
    other = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
    on, off = losses.barlow_twins_terms(z, other)
    assert 12 < float(on) < 20 and float(off) > 0
    # Invariant to per-dimension affine maps of either view (standardisation inside).
    scale = jnp.asarray(rng.uniform(0.1, 10, size=16), jnp.float32)
    a = losses.barlow_twins(z, other)
    b = losses.barlow_twins(z * scale + 5.0, other)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-4)


def test_barlow_twins_gradient_matches_finite_differences(x64):
    rng = np.random.default_rng(1)
    z1 = jnp.asarray(rng.normal(size=(6, 4)))
    z2 = jnp.asarray(rng.normal(size=(6, 4)))
    grad = jax.grad(losses.barlow_twins)(z1, z2, 0.3)
    num = finite_differences(lambda z: float(losses.barlow_twins(z, z2, 0.3)), np.asarray(z1))
    np.testing.assert_allclose(np.asarray(grad), num, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------
# Helpers


def finite_differences(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f`` at ``x`` (float64)."""
    grad = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        d = np.zeros(x.shape)
        d[idx] = eps
        grad[idx] = (f(x + d) - f(x - d)) / (2 * eps)
    return grad


def check_gradients(jax_fn, numpy_fn, args, frozen=()):
    """``jax.grad`` of ``jax_fn(*args)`` is exactly 0 for the positions in ``frozen`` (stop-gradient)
    and matches finite differences of ``numpy_fn`` for the others."""
    grads = jax.grad(jax_fn, argnums=tuple(range(len(args))))(*[jnp.asarray(a) for a in args])
    for i, (arg, grad) in enumerate(zip(args, grads)):
        grad = np.asarray(grad)
        if i in frozen:
            assert np.all(grad == 0), f"gradient flows into stop-gradient argument {i}"
            continue

        def partial(x, i=i):
            return numpy_fn(*args[:i], x, *args[i + 1 :])

        np.testing.assert_allclose(grad, finite_differences(partial, arg), rtol=1e-5, atol=1e-8)


def both(name, *extra):
    """The JAX loss and its NumPy reference, each with the trailing positional arguments ``extra``."""
    return (lambda *a: getattr(losses, name)(*a, *extra)), (lambda *a: getattr(ref, name)(*a, *extra))


def normal(rng, *shape, scale=1.0):
    return rng.normal(size=shape) * scale


def normalized_rows(rng, k, d):
    x = rng.normal(size=(k, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_matches(got, expected):
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_l2_normalize_floors_the_norm_like_torch(x64):
    # F.normalize: v / max(||v||, 1e-12). Tiny vectors above the floor still become unit vectors.
    v = np.array([[3e-10, 4e-10], [3e-14, 4e-14], [0.0, 0.0]])
    expected = np.stack([ref.normalize(row) for row in v])
    np.testing.assert_allclose(np.asarray(losses.l2_normalize(v)), expected, rtol=1e-12)
    np.testing.assert_allclose(expected[:2], [[0.6, 0.8], [0.03, 0.04]], rtol=1e-12)
    # The gradient stays finite at zero (the cosine losses of a zero prediction do not NaN).
    grad = jax.grad(lambda p: losses.simsiam(p, p, jnp.ones((2, 2)), jnp.ones((2, 2))))(jnp.zeros((2, 2)))
    assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------------------------------------------
# MoCo, SimCLR


@pytest.mark.parametrize("n,d,k,t", [(4, 3, 5, 0.2), (8, 16, 32, 0.07), (6, 8, None, 0.5), (1, 4, 7, 1.0)])
def test_info_nce_matches_numpy(x64, n, d, k, t):
    rng = np.random.default_rng(n + d)
    q, key = normal(rng, n, d, scale=2.0), normal(rng, n, d, scale=0.3)
    queue = None if k is None else normalized_rows(rng, k, d)
    got = losses.info_nce(q, key, None if queue is None else jnp.asarray(queue), temperature=t)
    assert_matches(got, ref.info_nce(q, key, queue, t))


@pytest.mark.parametrize("with_queue", [True, False])
def test_info_nce_gradients(x64, with_queue):
    rng = np.random.default_rng(2)
    q, k, queue = normal(rng, 4, 3), normal(rng, 4, 3), normalized_rows(rng, 5, 3)
    if with_queue:
        check_gradients(*both("info_nce", 0.3), [q, k, queue], frozen=(1, 2))
    else:
        check_gradients(*both("info_nce", None, 0.3), [q, k], frozen=(1,))


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0)])
def test_nt_xent_matches_numpy(x64, n, d, t):
    rng = np.random.default_rng(n * d)
    z1 = normal(rng, n, d)
    z2 = z1 + normal(rng, n, d, scale=0.5)
    assert_matches(losses.nt_xent(z1, z2, t), ref.nt_xent(z1, z2, t))
    # Symmetric in the views; invariant to each sample's scale (normalised inside).
    np.testing.assert_allclose(float(losses.nt_xent(z2, z1, t)), float(losses.nt_xent(z1, z2, t)), rtol=1e-12)
    scaled = z1 * rng.uniform(0.1, 10, size=(n, 1))
    np.testing.assert_allclose(float(losses.nt_xent(scaled, z2, t)), float(losses.nt_xent(z1, z2, t)), rtol=1e-12)


def test_nt_xent_gradients(x64):
    # The excluded self-pairs (-inf logits) must not leak NaN or mass into the gradient.
    rng = np.random.default_rng(3)
    check_gradients(*both("nt_xent", 0.4), [normal(rng, 3, 4), normal(rng, 3, 4)])


# ---------------------------------------------------------------------------------------------------
# SimSiam, BYOL, VICReg


@pytest.mark.parametrize("n,d", [(1, 3), (6, 5), (32, 16)])
def test_simsiam_byol_match_numpy(x64, n, d):
    rng = np.random.default_rng(n + 10 * d)
    p1, p2, z1, z2 = (normal(rng, n, d, scale=s) for s in (1.0, 2.0, 0.5, 3.0))
    assert_matches(losses.simsiam(p1, p2, z1, z2), ref.simsiam(p1, p2, z1, z2))
    assert_matches(losses.byol(p1, p2, z1, z2), ref.byol(p1, p2, z1, z2))
    # The two are the same cosines: byol = 4 + 4 simsiam; aligned predictions reach the minima.
    byol, simsiam = float(losses.byol(p1, p2, z1, z2)), float(losses.simsiam(p1, p2, z1, z2))
    np.testing.assert_allclose(byol, 4 + 4 * simsiam, rtol=1e-12)
    assert abs(float(losses.simsiam(3 * z2, 0.5 * z1, z1, z2)) + 1) < 1e-12
    assert abs(float(losses.byol(3 * z2, 0.5 * z1, z1, z2))) < 1e-12


@pytest.mark.parametrize("name", ["simsiam", "byol"])
def test_simsiam_byol_gradients_stop_at_targets(x64, name):
    rng = np.random.default_rng(4)
    args = [normal(rng, 4, 3) for _ in range(4)]
    check_gradients(*both(name), args, frozen=(2, 3))


@pytest.mark.parametrize("n,d,coeffs", [(4, 3, (25.0, 25.0, 1.0)), (9, 6, (1.0, 2.0, 3.0)), (16, 32, (25.0, 25, 1))])
def test_vicreg_matches_numpy(x64, n, d, coeffs):
    rng = np.random.default_rng(n + d)
    # Some dimensions below unit std and some above, so the hinge is partly active.
    z1 = normal(rng, n, d) * rng.uniform(0.2, 2.0, size=d) + normal(rng, d)
    z2 = 0.7 * z1 + normal(rng, n, d, scale=0.4)
    assert_matches(losses.vicreg(z1, z2, *coeffs), ref.vicreg(z1, z2, *coeffs))


def test_vicreg_gradients(x64):
    rng = np.random.default_rng(5)
    z1 = normal(rng, 5, 3) * np.array([0.3, 1.0, 2.0])
    z2 = normal(rng, 5, 3)
    check_gradients(*both("vicreg", 2.0, 3.0, 0.5), [z1, z2])


# ---------------------------------------------------------------------------------------------------
# SwAV


@pytest.mark.parametrize("b,k", [(4, 3), (16, 10), (7, 30)])
@pytest.mark.parametrize("epsilon,n_iters", [(0.05, 3), (0.1, 1), (0.05, 0), (0.03, 10)])
def test_sinkhorn_matches_literal_official(x64, b, k, epsilon, n_iters):
    # Cosine-like scores; the literal algorithm (no max subtraction) is exact in float64 here.
    scores = np.tanh(normal(np.random.default_rng(b * k), b, k))
    codes = np.asarray(losses.sinkhorn(scores, epsilon, n_iters))
    np.testing.assert_allclose(codes, ref.sinkhorn(scores, epsilon, n_iters), rtol=1e-6, atol=1e-300)
    # Adding a constant to every score changes nothing (the max subtraction cancels likewise).
    np.testing.assert_allclose(np.asarray(losses.sinkhorn(scores + 0.7, epsilon, n_iters)), codes, rtol=1e-9)


def test_sinkhorn_marginals(x64):
    rng = np.random.default_rng(6)
    b, k = 12, 5
    scores = np.tanh(normal(rng, b, k))
    # The last step normalises the samples: each returned row is an assignment summing to 1.
    for n_iters in (1, 3):
        codes = np.asarray(losses.sinkhorn(scores, 0.1, n_iters))
        np.testing.assert_allclose(codes.sum(1), np.ones(b), rtol=1e-12)
    # Without iterations: the whole matrix softmax(scores / eps) times B.
    flat = np.exp(scores / 0.1 - np.max(scores / 0.1))
    np.testing.assert_allclose(np.asarray(losses.sinkhorn(scores, 0.1, 0)), b * flat / flat.sum(), rtol=1e-12)
    # The prototype marginals are only approximately equal after 3 iterations; converged: B / K each.
    converged = np.asarray(losses.sinkhorn(scores, 0.1, 500))
    np.testing.assert_allclose(converged.sum(0), np.full(k, b / k), rtol=1e-8)
    assert not np.allclose(np.asarray(losses.sinkhorn(scores, 0.1, 1)).sum(0), b / k, rtol=1e-3)
    # Stop-gradient.
    weights = normal(rng, b, k)
    grad = jax.grad(lambda s: jnp.sum(losses.sinkhorn(s) * weights))(jnp.asarray(scores))
    assert np.all(np.asarray(grad) == 0)


def test_sinkhorn_max_subtraction_avoids_float32_overflow():
    # scores / eps > 88.7 overflows float32's exp: the literal algorithm gives NaN, ours the codes.
    scores = 5.5 + np.tanh(normal(np.random.default_rng(7), 8, 6))
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.all(np.isfinite(ref.sinkhorn(scores.astype(np.float32), 0.05, 3)))
    codes = losses.sinkhorn(jnp.asarray(scores, jnp.float32), 0.05, 3)
    assert codes.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(codes), ref.sinkhorn(scores, 0.05, 3), rtol=2e-4, atol=1e-6)


SWAV_CASES = [
    # batch, prototypes, crops, n_assign, queue length, temperature, epsilon, n_iters
    (4, 5, 2, 2, 0, 0.1, 0.05, 3),
    (6, 8, 4, 2, 0, 0.1, 0.05, 3),
    (6, 8, 4, 2, 10, 0.1, 0.05, 3),
    (5, 3, 3, 1, 7, 0.2, 0.1, 1),
    (3, 6, 3, 3, 4, 0.5, 0.03, 5),
]


def swav_inputs(b, k, crops, n_assign, n_queue, seed=0):
    rng = np.random.default_rng(seed + b * k * crops)
    scores = [np.tanh(normal(rng, b, k)) for _ in range(crops)]
    queue = [np.tanh(normal(rng, n_queue, k)) for _ in range(n_assign)] if n_queue else None
    return scores, queue


@pytest.mark.parametrize("b,k,crops,n_assign,n_queue,t,epsilon,n_iters", SWAV_CASES)
def test_swav_matches_numpy(x64, b, k, crops, n_assign, n_queue, t, epsilon, n_iters):
    scores, queue = swav_inputs(b, k, crops, n_assign, n_queue)
    got = losses.swav(scores, t, epsilon, n_iters, n_assign, queue)
    assert_matches(got, ref.swav(scores, t, epsilon, n_iters, n_assign, queue))
    if queue is not None:  # the queue changes the codes, hence the loss
        assert abs(float(got) - ref.swav(scores, t, epsilon, n_iters, n_assign)) > 1e-6


@pytest.mark.parametrize("n_queue", [0, 6])
def test_swav_gradient_does_not_flow_through_the_codes(x64, n_queue):
    b, k, crops, n_assign = 4, 5, 3, 2
    scores, queue = swav_inputs(b, k, crops, n_assign, n_queue, seed=1)
    frozen = []
    for i in range(n_assign):
        out = scores[i] if queue is None else np.concatenate([queue[i], scores[i]])
        frozen.append(ref.sinkhorn(out, 0.05, 3)[-b:])
    extra = list(queue or [])

    def jax_fn(*arrays):
        return losses.swav(list(arrays[:crops]), 0.1, 0.05, 3, n_assign, list(arrays[crops:]) or None)

    def with_frozen_codes(*arrays):
        return ref.swav(list(arrays[:crops]), 0.1, 0.05, 3, n_assign, codes=frozen)

    check_gradients(jax_fn, with_frozen_codes, scores + extra, frozen=range(crops, crops + len(extra)))
    # The check has teeth: differentiating through the codes gives another gradient for crop 0.
    def through_codes(x):
        return ref.swav([x] + scores[1:], 0.1, 0.05, 3, n_assign, queue)


    grad0 = np.asarray(jax.grad(jax_fn)(*[jnp.asarray(a) for a in scores + extra]))
    assert np.max(np.abs(finite_differences(through_codes, scores[0]) - grad0)) > 1e-3


def test_swav_rejects_bad_n_assign():
    scores = [jnp.zeros((2, 3))] * 2
    for n_assign in (0, 3):
        with pytest.raises(ValueError):
            losses.swav(scores, n_assign=n_assign)


# ---------------------------------------------------------------------------------------------------
# DINO


@pytest.mark.parametrize(
    "n,k,crops,center_shape,temps",
    [(4, 5, 2, (5,), (0.1, 0.04)), (3, 16, 4, (1, 16), (0.1, 0.07)), (8, 10, 6, (10,), (0.2, 0.04))],
)
def test_dino_matches_numpy(x64, n, k, crops, center_shape, temps):
    rng = np.random.default_rng(n * k + crops)
    student = [normal(rng, n, k) for _ in range(crops)]
    teacher = [normal(rng, n, k) for _ in range(2)]
    center = normal(rng, *center_shape, scale=0.3)
    assert_matches(losses.dino(student, teacher, center, *temps), ref.dino(student, teacher, center, *temps))
    entropy = losses.dino_teacher_entropy(teacher, center, temps[1])
    assert_matches(entropy, ref.dino_teacher_entropy(teacher, center, temps[1]))
    # loss - entropy is the mean KL from the targets to the student: >= 0, 0 when the student equals them.
    assert float(losses.dino(student, teacher, center, *temps)) - float(entropy) >= 0
    twins = [teacher[0], teacher[0]]  # every student crop meets a teacher crop equal to its own target
    same = [(teacher[0] - np.reshape(center, -1)) * temps[0] / temps[1]] * crops
    kl = float(losses.dino(same, twins, center, *temps)) - float(losses.dino_teacher_entropy(twins, center, temps[1]))
    np.testing.assert_allclose(kl, 0.0, atol=1e-9)
    new_center = losses.dino_center(jnp.asarray(center), teacher, 0.9)
    assert new_center.shape == center.shape and new_center.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(new_center), ref.dino_center(center, teacher, 0.9), rtol=1e-6)


def test_dino_gradients_stop_at_teacher_and_center(x64):
    rng = np.random.default_rng(8)
    crops = 3
    args = [normal(rng, 3, 4) for _ in range(crops + 2)] + [normal(rng, 4, scale=0.3)]

    def split(arrays):
        return list(arrays[:crops]), list(arrays[crops : crops + 2]), arrays[-1]

    check_gradients(
        lambda *a: losses.dino(*split(a), 0.1, 0.04),
        lambda *a: ref.dino(*split(a), 0.1, 0.04),
        args,
        frozen=range(crops, crops + 3),
    )
    def center_sum(c, t):
        return jnp.sum(losses.dino_center(c, [t, 2 * t], 0.9))

    grads = jax.grad(center_sum, argnums=(0, 1))(jnp.asarray(args[-1]), jnp.asarray(args[crops]))
    assert all(np.all(np.asarray(g) == 0) for g in grads)


# ---------------------------------------------------------------------------------------------------
# All losses: precision and batch-global semantics under jit


def all_losses(rng, n=8, d=6, k=5):
    """Each loss as (function, inputs), the inputs batch-first arrays (lists flattened)."""
    a = [np.tanh(normal(rng, n, d)) for _ in range(4)]
    queue = normalized_rows(rng, 10, d)
    return {
        "info_nce": (lambda q, k_, u: losses.info_nce(q, k_, u), [a[0], a[1], queue]),
        "nt_xent": (losses.nt_xent, a[:2]),
        "barlow_twins": (losses.barlow_twins, a[:2]),
        "simsiam": (losses.simsiam, a),
        "byol": (losses.byol, a),
        "vicreg": (losses.vicreg, a[:2]),
        "swav": (
            lambda *s: losses.swav(list(s[:3]), queue_scores=[s[3], s[3]]),
            [a[0][:, :k], a[1][:, :k], a[2][:, :k], queue[:, :k]],
        ),
        "dino": (lambda s0, s1, s2, t0, t1: losses.dino([s0, s1, s2], [t0, t1], jnp.zeros(d)), a + [a[0]]),
    }


def test_losses_promote_bfloat16_to_float32():
    for name, (fn, args) in all_losses(np.random.default_rng(9)).items():
        low = [jnp.asarray(x, jnp.bfloat16) for x in args]
        got = fn(*low)
        assert got.dtype == jnp.float32, name
        expected = fn(*[x.astype(jnp.float32) for x in low])
        np.testing.assert_allclose(float(got), float(expected), rtol=1e-6, err_msg=name)


def test_losses_are_batch_global_under_jit_with_a_sharded_batch():
    """Sharding the batch over 8 devices changes nothing: batch sums and means are global."""
    mesh = sharding.make_mesh()
    assert mesh.devices.size == 8
    batch = sharding.batch_sharded(mesh)
    for name, (fn, args) in all_losses(np.random.default_rng(10), n=16).items():
        args = [jnp.asarray(x, jnp.float32) for x in args]
        placed = [jax.device_put(x, batch if x.shape[0] == 16 else NamedSharding(mesh, P())) for x in args]
        assert placed[0].sharding.spec == P(sharding.DATA_AXIS)
        np.testing.assert_allclose(float(jax.jit(fn)(*placed)), float(fn(*args)), rtol=2e-6, err_msg=name)
