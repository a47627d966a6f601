"""Distributed discrete Gaussian noise for secure aggregation (integer domain).

Pipeline on each device, before secure-aggregation masking (Kairouz, Liu &
Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021, arXiv:2102.06387, Algorithm 1 without the random
rotation):

1. clip the float update to L2 norm ``clipping_norm`` (:func:`protocols.dp.mechanisms.clip_by_l2_norm`);
2. scale by ``scale`` and round each coordinate *randomly* to an adjacent integer
   (unbiased), retrying until the integer vector's norm is at most
   :func:`rounded_l2_bound` (*conditional* randomized rounding, KLS'21 Sec. 4.1),
   which makes the integer-domain L2 sensitivity a hard bound;
3. add ``N_Z(0, σ_dev²)`` noise per coordinate with the exact sampler of Canonne,
   Kamath & Steinke, "The Discrete Gaussian for Differential Privacy" (NeurIPS
   2020, arXiv:2004.00010), Algorithms 1–3, in integer/rational arithmetic;
4. hand the signed int64 vector to the fixed-point encoder of the secure
   aggregation layer, which reduces it modulo 2^b (:func:`to_modular` does the
   same reduction); the server decodes the modular sum with :func:`from_modular`
   and :func:`dequantize`.

Reduction modulo 2^b and decoding are post-processing of the noisy integer sum,
so they never weaken the privacy guarantee; a sum that overflows the signed range
only costs accuracy (:meth:`DistributedDiscreteGaussianPlan.required_modulus_bits`).

Dropouts: each device adds σ_dev² = σ_target² / (min_survivors − num_colluders).
The released sum carries noise from the surviving, non-colluding devices only,
so the round is accounted with the *actual* number of honest survivors
(:meth:`DistributedDiscreteGaussianPlan.event`). With ``min_survivors`` equal to
the expected number of devices, dropouts mean less noise and a larger ε, which the
ledger records honestly; with ``min_survivors`` at the secure-aggregation
threshold, every round that completes has at least the target variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numpy.typing import ArrayLike, NDArray

from protocols.dp._validation import check_int, check_real
from protocols.dp.events import DistributedDiscreteGaussianEvent
from protocols.dp.mechanisms import clip_by_l2_norm
from protocols.dp.rng import RandomGenerator
from protocols.errors import InvalidParameterError

__all__ = [
    "DistributedDiscreteGaussianPlan",
    "dequantize",
    "discrete_gaussian",
    "discrete_gaussian_pmf",
    "from_modular",
    "quantize",
    "rounded_l2_bound",
    "to_modular",
]

_Ints = NDArray[np.int64]
_WORD_BITS = 62
_MAX_VARIANCE = float(2**60)


def _rational_variance(variance: float | int | Fraction) -> Fraction:
    if isinstance(variance, Fraction):
        v = variance
    else:
        v = Fraction(check_real("variance", variance, low=0.0, low_open=True))
    if v <= 0 or v > _MAX_VARIANCE:
        raise InvalidParameterError(f"`variance` must be in (0, 2**60]; got {float(v)!r}")
    return v


def _bernoulli_ratio(num: _Ints, den: _Ints, generator: RandomGenerator) -> NDArray[np.bool_]:
    """Exact Bernoulli(num/den) for int64 arrays with 0 <= num <= den < 2**62."""
    return np.asarray(generator.integers(0, den, size=den.shape) < num, dtype=bool)


def _bernoulli_big(
    num: NDArray[np.object_], den: NDArray[np.object_], generator: RandomGenerator
) -> NDArray[np.bool_]:
    """Exact Bernoulli(num/den) for arbitrary-precision ints with 0 <= num < den.

    Compares a uniform U = Σ c_i 2^{-62 i} with the base-2^62 expansion of num/den
    digit by digit (long division); almost every draw is decided by the first digit.
    """
    out = np.zeros(num.shape, dtype=bool)
    rem = num.copy()
    todo = np.arange(num.size)
    while todo.size:
        shifted = rem[todo] * (1 << _WORD_BITS)
        digit_obj = shifted // den[todo]
        rem[todo] = shifted - digit_obj * den[todo]
        digit = digit_obj.astype(np.int64)
        c = np.asarray(generator.integers(0, 1 << _WORD_BITS, size=todo.size), dtype=np.int64)
        out[todo[c < digit]] = True
        todo = todo[c == digit]
    return out


def _bernoulli_exp_small(num: _Ints, den: _Ints, generator: RandomGenerator) -> NDArray[np.bool_]:
    """Exact Bernoulli(exp(-num/den)) for int64 0 <= num <= den (CKS'20 Algorithm 1, γ <= 1)."""
    k = np.ones(num.shape, dtype=np.int64)
    active = np.arange(num.size)
    while active.size:
        kk = k[active]
        if int(den[active].max()) > (2**62) // int(kk.max() + 1):
            raise OverflowError("discrete Gaussian sampler: integer range exceeded")
        # A ~ Bernoulli(γ / K)
        a = _bernoulli_ratio(num[active], den[active] * kk, generator)
        k[active[a]] += 1
        active = active[a]
    odd: NDArray[np.bool_] = (k % 2) == 1
    return odd


def _bernoulli_exp_minus_one(count: int, generator: RandomGenerator) -> NDArray[np.bool_]:
    ones = np.ones(count, dtype=np.int64)
    return _bernoulli_exp_small(ones, ones, generator)


def _bernoulli_exp_big(
    num: NDArray[np.object_], den: int, generator: RandomGenerator
) -> NDArray[np.bool_]:
    """Exact Bernoulli(exp(-num/den)) for arbitrary-precision num >= 0 (CKS'20 Algorithm 1)."""
    whole_obj = num // den
    frac = num - whole_obj * den
    whole = whole_obj.astype(np.int64)
    ok = np.ones(num.shape, dtype=bool)
    # exp(-floor(γ)): floor(γ) independent Bernoulli(exp(-1)) successes.
    remaining = whole.copy()
    while True:
        idx = np.flatnonzero(ok & (remaining > 0))
        if not idx.size:
            break
        ok[idx] &= _bernoulli_exp_minus_one(idx.size, generator)
        remaining[idx] -= 1
    # exp(-frac/den) with frac/den in [0, 1): K-loop with A ~ Bernoulli(frac/den) ∧ Bernoulli(1/K).
    idx = np.flatnonzero(ok)
    k = np.ones(idx.size, dtype=np.int64)
    active = np.arange(idx.size)
    den_arr = np.full(num.shape, den, dtype=object)
    while active.size:
        kk = k[active]
        a = _bernoulli_ratio(np.ones_like(kk), kk, generator)
        b = _bernoulli_big(frac[idx[active]], den_arr[idx[active]], generator)
        hit = a & b
        k[active[hit]] += 1
        active = active[hit]
    ok[idx] = (k % 2) == 1
    return ok


def _discrete_laplace(t: int, count: int, generator: RandomGenerator) -> _Ints:
    """Exact discrete Laplace with scale t (P(x) ∝ exp(-|x|/t)); CKS'20 Algorithm 2, s = 1."""
    out = np.empty(count, dtype=np.int64)
    todo = np.arange(count)
    t_arr = np.int64(t)
    while todo.size:
        n = todo.size
        u = np.asarray(generator.integers(0, t, size=n), dtype=np.int64)
        d = _bernoulli_exp_small(u, np.full(n, t_arr, dtype=np.int64), generator)
        v = np.zeros(n, dtype=np.int64)
        going = np.flatnonzero(d)
        while going.size:
            a = _bernoulli_exp_minus_one(going.size, generator)
            v[going[a]] += 1
            going = going[a]
        x = u + t_arr * v
        b = np.asarray(generator.integers(0, 2, size=n), dtype=np.int64)
        accept = d & ~((b == 1) & (x == 0))
        out[todo[accept]] = ((1 - 2 * b) * x)[accept]
        todo = todo[~accept]
    return out


def discrete_gaussian(
    *, variance: float | Fraction, size: int | tuple[int, ...], generator: RandomGenerator
) -> _Ints:
    """Exact samples of the discrete Gaussian ``N_Z(0, σ²)``: P(x) ∝ exp(−x²/(2σ²)), x ∈ Z.

    Canonne, Kamath & Steinke 2020 (arXiv:2004.00010), Algorithm 3 with the
    discrete Laplace of Algorithm 2 and Bernoulli(exp(−γ)) of Algorithm 1, run in
    exact rational arithmetic on ``Fraction(variance)`` (a float σ² is used at its
    exact binary value) and vectorised over the output. Its variance is slightly
    below σ² (by a relative ~e^{−2π²σ²}, negligible for σ >= 1).

    Parameters
    ----------
    variance:
        σ² in integer units squared, in (0, 2**60].
    size:
        Output shape.
    generator:
        A :class:`numpy.random.Generator` or :class:`~protocols.dp.rng.SecureGenerator`.

    Examples
    --------
    >>> import numpy as np
    >>> x = discrete_gaussian(variance=4.0, size=10_000, generator=np.random.default_rng(0))
    >>> x.dtype.name, abs(float(x.var()) - 4.0) < 0.3
    ('int64', True)
    """
    v = _rational_variance(variance)
    shape = (size,) if isinstance(size, int) else tuple(size)
    count = math.prod(shape)
    out = np.empty(count, dtype=np.int64)
    # t = floor(σ) + 1 with floor(sqrt(v)) = isqrt(floor(v)).
    t = math.isqrt(v.numerator // v.denominator) + 1
    num_v, den_v = v.numerator, v.denominator
    # γ(y) = (|y| − σ²/t)² / (2σ²) = (|y|·t·den − num)² / (2·num·den·t²)
    gamma_den = 2 * num_v * den_v * t * t
    todo = np.arange(count)
    while todo.size:
        y = _discrete_laplace(t, todo.size, generator)
        diff = np.abs(y).astype(object) * (t * den_v) - num_v
        c = _bernoulli_exp_big(diff * diff, gamma_den, generator)
        out[todo[c]] = y[c]
        todo = todo[~c]
    return out.reshape(shape)


def discrete_gaussian_pmf(values: ArrayLike, *, variance: float) -> NDArray[np.float64]:
    """P(X = x) of ``N_Z(0, σ²)``, normalised over |x| <= ceil(40σ) + 1 (tail < 1e-300)."""
    s2 = check_real("variance", variance, low=0.0, low_open=True)
    half = math.ceil(40.0 * math.sqrt(s2)) + 1
    support = np.arange(-half, half + 1, dtype=np.float64)
    norm = float(np.exp(-(support**2) / (2.0 * s2)).sum())
    x = np.asarray(values, dtype=np.float64)
    pmf: NDArray[np.float64] = np.exp(-(x**2) / (2.0 * s2)) / norm
    return pmf


def rounded_l2_bound(*, l2_norm: float, dimension: int, beta: float) -> float:
    """Norm bound after conditional randomized rounding (KLS'21, Sec. 4.1, Eq. 15).

    ``min( l2_norm + √d,  sqrt(l2_norm² + d/4 + √(2 ln(1/β))·(l2_norm + √d/2)) )``;
    β = 0 gives the deterministic bound ``l2_norm + √d``.

    Parameters
    ----------
    l2_norm:
        Norm of the scaled vector before rounding (``clipping_norm · scale``), >= 0.
    dimension:
        ``d`` >= 1.
    beta:
        Rounding retry parameter in [0, 1); each attempt fails w.p. <= β.
    """
    c = check_real("l2_norm", l2_norm, low=0.0)
    d = check_int("dimension", dimension, low=1)
    b = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
    bound_1 = c + math.sqrt(d)
    if b == 0.0:
        return bound_1
    sq = c * c + 0.25 * d + math.sqrt(2.0 * math.log(1.0 / b)) * (c + 0.5 * math.sqrt(d))
    return min(bound_1, math.sqrt(sq))


def quantize(
    vector: ArrayLike,
    *,
    scale: float,
    generator: RandomGenerator,
    l2_bound: float | None = None,
    max_attempts: int = 1000,
) -> _Ints:
    """Scale and randomly round to int64: E[out] = vector · scale.

    Each coordinate ``y = x·scale`` becomes ``floor(y) + Bernoulli(y − floor(y))``.
    With ``l2_bound`` the rounding is redrawn until ``‖out‖₂ <= l2_bound``
    (conditional randomized rounding), so the bound holds exactly.

    Raises
    ------
    InvalidParameterError
        If no rounding met ``l2_bound`` within ``max_attempts``, or a scaled value
        does not fit int64 safely (|x·scale| >= 2**52).
    """
    s = check_real("scale", scale, low=0.0, low_open=True)
    attempts = check_int("max_attempts", max_attempts, low=1)
    y = np.asarray(vector, dtype=np.float64) * s
    if not np.all(np.isfinite(y)) or (y.size and float(np.abs(y).max()) >= 2.0**52):
        raise InvalidParameterError(
            "`vector` · `scale` must be finite with magnitude < 2**52; "
            f"got max |x·scale| = {float(np.abs(y).max()) if y.size else 0.0!r}"
        )
    base = np.floor(y)
    frac = y - base
    bound = None if l2_bound is None else check_real("l2_bound", l2_bound, low=0.0)
    for _ in range(attempts):
        out = (base + (generator.random(size=y.shape) < frac)).astype(np.int64)
        if bound is None or float(np.sqrt(np.sum(out.astype(np.float64) ** 2))) <= bound:
            return out
    raise InvalidParameterError(
        f"conditional rounding did not meet `l2_bound` = {bound!r} in "
        f"`max_attempts` = {attempts} attempts; is the input clipped?"
    )


def to_modular(values: ArrayLike, *, modulus_bits: int) -> _Ints:
    """Reduce signed integers into ``[0, 2**modulus_bits)`` (two's-complement style)."""
    b = check_int("modulus_bits", modulus_bits, low=1, high=62)
    x = np.asarray(values)
    if not np.issubdtype(x.dtype, np.integer):
        raise InvalidParameterError(f"`values` must be an integer array; got dtype {x.dtype}")
    out: _Ints = np.mod(x.astype(np.int64), np.int64(1) << np.int64(b))
    return out


def from_modular(values: ArrayLike, *, modulus_bits: int) -> _Ints:
    """Map ``[0, 2**b)`` back to the centred range ``[−2**(b−1), 2**(b−1))``."""
    b = check_int("modulus_bits", modulus_bits, low=1, high=62)
    m = np.int64(1) << np.int64(b)
    x = to_modular(values, modulus_bits=b)
    out: _Ints = np.where(x >= m // 2, x - m, x)
    return out


def dequantize(values: ArrayLike, *, scale: float) -> NDArray[np.float64]:
    """Integer (sum) back to floats: ``values / scale``."""
    s = check_real("scale", scale, low=0.0, low_open=True)
    out: NDArray[np.float64] = np.asarray(values, dtype=np.float64) / s
    return out


@dataclass(frozen=True, kw_only=True)
class DistributedDiscreteGaussianPlan:
    """Parameters of one user-level distributed-DP aggregation, shared by all devices.

    The privacy unit is the device (user): its whole clipped update is protected.

    Parameters
    ----------
    noise_multiplier:
        ``z``: target standard deviation of the *total* noise divided by the
        integer-domain L2 sensitivity :attr:`l2_sensitivity`, in (0, inf).
    clipping_norm:
        L2 bound ``C`` on each device's float update, in (0, inf).
    scale:
        Fixed-point scale (integer units per float unit), in (0, inf).
    dimension:
        Length ``d`` of the update vector.
    min_survivors:
        Number of surviving devices the noise is split among (see module doc).
    num_colluders:
        Devices assumed to collude with the server; their noise does not count.
    beta:
        Conditional-rounding parameter in [0, 1) (KLS'21 use e^{−1/2}).

    Examples
    --------
    >>> import numpy as np
    >>> plan = DistributedDiscreteGaussianPlan(noise_multiplier=1.0, clipping_norm=1.0,
    ...     scale=64.0, dimension=8, min_survivors=4)
    >>> g = np.random.default_rng(0)
    >>> shares = [plan.encode(np.full(8, 0.1), generator=g) for _ in range(4)]
    >>> modular = sum(to_modular(s, modulus_bits=32) for s in shares) % 2**32
    >>> total = plan.decode(from_modular(modular, modulus_bits=32))
    >>> total.shape, plan.event(num_survivors=4).num_shares
    ((8,), 4)
    """

    noise_multiplier: float
    clipping_norm: float
    scale: float
    dimension: int
    min_survivors: int
    num_colluders: int = 0
    beta: float = math.exp(-0.5)

    def __post_init__(self) -> None:
        check_real("noise_multiplier", self.noise_multiplier, low=0.0, low_open=True)
        check_real("clipping_norm", self.clipping_norm, low=0.0, low_open=True)
        check_real("scale", self.scale, low=0.0, low_open=True)
        check_int("dimension", self.dimension, low=1)
        check_int("min_survivors", self.min_survivors, low=1)
        check_int("num_colluders", self.num_colluders, low=0, high=self.min_survivors - 1)
        check_real("beta", self.beta, low=0.0, high=1.0, high_open=True)
        if self.per_device_variance < 0.25:
            raise InvalidParameterError(
                f"per-device noise variance {self.per_device_variance!r} is below 1/4 "
                f"(σ < 1/2, outside KLS'21 Theorem 1); increase `scale` "
                f"(got {self.scale!r}) or `noise_multiplier`"
            )

    @property
    def l2_sensitivity(self) -> float:
        """Integer-domain L2 sensitivity: the conditional-rounding bound of ``C·scale``."""
        return rounded_l2_bound(
            l2_norm=self.clipping_norm * self.scale, dimension=self.dimension, beta=self.beta
        )

    @property
    def target_variance(self) -> float:
        """Variance of the total noise with ``min_survivors`` honest shares: (z·Δ)²."""
        return (self.noise_multiplier * self.l2_sensitivity) ** 2

    @property
    def per_device_variance(self) -> float:
        """σ² each device adds: target / (min_survivors − num_colluders)."""
        return self.target_variance / (self.min_survivors - self.num_colluders)

    def encode(self, update: ArrayLike, *, generator: RandomGenerator) -> _Ints:
        """Clip, scale, conditionally round and add this device's noise share (signed int64)."""
        x = np.asarray(update, dtype=np.float64).reshape(-1)
        if x.size != self.dimension:
            raise InvalidParameterError(
                f"`update` must have {self.dimension} coordinates; got {x.size}"
            )
        clipped = clip_by_l2_norm(x, clipping_norm=self.clipping_norm)
        ints = quantize(
            clipped, scale=self.scale, generator=generator, l2_bound=self.l2_sensitivity
        )
        noise = discrete_gaussian(
            variance=self.per_device_variance, size=self.dimension, generator=generator
        )
        out: _Ints = ints + noise
        return out

    def decode(self, total: ArrayLike) -> NDArray[np.float64]:
        """The float sum from the (centred) integer sum of the survivors' shares."""
        return dequantize(total, scale=self.scale)

    def total_variance(self, *, num_survivors: int) -> float:
        """Variance of the noise the adversary does not know, given the survivors."""
        return self.per_device_variance * self._honest(num_survivors)

    def _honest(self, num_survivors: int) -> int:
        n = check_int("num_survivors", num_survivors, low=1)
        honest = n - self.num_colluders
        if honest < 1:
            raise InvalidParameterError(
                f"`num_survivors` must exceed `num_colluders` = {self.num_colluders}; got {n}"
            )
        return honest

    def event(self, *, num_survivors: int) -> DistributedDiscreteGaussianEvent:
        """The privacy event of one aggregation with ``num_survivors`` surviving devices."""
        return DistributedDiscreteGaussianEvent(
            per_device_variance=self.per_device_variance,
            num_shares=self._honest(num_survivors),
            l2_sensitivity=self.l2_sensitivity,
            dimension=self.dimension,
        )

    def required_modulus_bits(self, *, num_devices: int, num_stddevs: float = 6.0) -> int:
        """Bits b so the centred sum fits ``[−2^(b−1), 2^(b−1))`` with high probability.

        Worst case per coordinate: every device puts its whole norm on it
        (n·Δ), plus ``num_stddevs`` standard deviations of the total noise.
        """
        n = check_int("num_devices", num_devices, low=1)
        k = check_real("num_stddevs", num_stddevs, low=0.0)
        bound = n * self.l2_sensitivity + k * math.sqrt(self.per_device_variance * n)
        return math.ceil(math.log2(2.0 * bound + 2.0))
