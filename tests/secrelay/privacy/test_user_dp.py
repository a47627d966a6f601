"""User-level DP on the aggregates: clipping bounds a user's contribution, central and
distributed noise have the configured variance, the server never sees an un-noised sum
under SecAgg, dropouts are accounted with the actual survivors, sampling is honest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.dp import (
    DistributedDiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    make_accountant,
)
from protocols.errors import InvalidParameterError
from secrelay.federated.aggregation import PlaintextSum
from secrelay.federated.messages import ContributionUpload, MaskedUpload
from secrelay.federated.transcript import Channel, Transcript
from secrelay.privacy.distributed_dp import DistributedGaussianSum
from secrelay.privacy.user_dp import PACKED_NAME, CentralGaussianSum, ClipUpdate


def _contribs(n: int, d: int, *, scale: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {k: {"delta": rng.normal(size=d) * scale, "weight": np.ones(1)} for k in range(n)}


def _central(**kw):
    args = {
        "noise_multiplier": 1.5,
        "clipping_norm": 0.5,
        "delta": 1e-5,
        "sampling": "poisson",
        "sample_rate": 0.25,
        "population": range(40),
        "seed": 3,
    }
    args.update(kw)
    return CentralGaussianSum(PlaintextSum(), **args)


@pytest.mark.parametrize("magnitude", [1.0, 1e6, 1e300])
def test_clip_update_bounds_an_adversarially_large_update(magnitude: float) -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(size=1000) * magnitude
    out = ClipUpdate(0.5).apply(delta, rng=rng)
    assert np.linalg.norm(out) <= 0.5
    unit = delta / magnitude  # the direction is kept (computed without overflow)
    np.testing.assert_allclose(out / np.linalg.norm(out), unit / np.linalg.norm(unit), rtol=1e-9)


def test_sum_wrappers_bound_each_users_contribution_even_without_the_transform() -> None:
    """A user sending a huge update moves the noised sum by at most C (same noise)."""
    d = 50
    base = _contribs(5, d)
    evil = {k: dict(v) for k, v in base.items()}
    evil[4] = {"delta": np.full(d, 1e12), "weight": np.ones(1)}
    without = {k: v for k, v in base.items() if k != 4}
    for make in (  # reproducible: the same seed gives the same noise
        lambda: _central(randomness="reproducible"),
        lambda: DistributedGaussianSum(
            noise_multiplier=1.0,
            clipping_norm=0.5,
            delta=1e-5,
            seed=5,
            randomness="reproducible",
        ),
    ):
        a = make().aggregate(1, evil, Channel()).sums["delta"]
        b = make().aggregate(1, without, Channel()).sums["delta"]
        if isinstance(make(), CentralGaussianSum):  # identical noise: exact difference
            assert np.linalg.norm(a - b) <= 0.5 + 1e-9
        else:  # different noise draws per device set: compare with the noise scale
            assert np.linalg.norm(a - b) < 0.5 + 6 * math.sqrt(2 * d) * 1.0 * 0.5


def test_central_noise_has_the_configured_variance() -> None:
    d, c, z = 20_000, 0.5, 1.5
    contribs = _contribs(6, d)
    channel = Channel()
    res = _central(noise_multiplier=z, clipping_norm=c).aggregate(2, contribs, channel)
    true = sum(v["delta"] for v in contribs.values())  # norms << C: no clipping
    noise = res.sums["delta"] - true
    assert noise.std() == pytest.approx(z * c, rel=0.03)
    assert abs(noise.mean()) < 5 * z * c / math.sqrt(d)
    # Fixed denominator: the expected number of participants, not the actual count.
    assert res.sums["weight"].tolist() == [0.25 * 40]
    # The plaintext transcript never carried the weights.
    uploads = [m for m in channel.transcript.server_view() if isinstance(m, ContributionUpload)]
    assert uploads and all(set(m.contribution) == {PACKED_NAME} for m in uploads)


def test_poisson_and_fixed_sampling_are_accounted_honestly() -> None:
    contribs = _contribs(4, 10)
    rec = _central().aggregate(1, contribs, Channel()).privacy_records[0]
    assert rec.event == PoissonSampledEvent(
        sample_rate=0.25, event=GaussianEvent(noise_multiplier=1.5)
    )
    assert rec.devices == tuple(str(i) for i in range(40))  # amplification covers everyone
    assert rec.unit == "user" and rec.sample_rate == 0.25 and rec.sensitivity == 0.5
    fixed = _central(sampling="fixed").aggregate(1, contribs, Channel(), dropouts={2: "upload"})
    (frec,) = fixed.privacy_records
    assert frec.event == GaussianEvent(noise_multiplier=1.5)  # q = 1: no amplification
    assert frec.devices == ("0", "1", "3") and frec.sample_rate is None
    # Replace-one adjacency: sensitivity 2C and noise z·2C (issue 12).
    assert rec.adjacency == "add_remove" and frec.adjacency == "replace_one"
    assert frec.sensitivity == 1.0 and frec.sigma == pytest.approx(1.5)
    assert fixed.sums["weight"].tolist() == [3.0]
    eps_poisson = make_accountant("prv").compose(rec.event, count=10).get_epsilon(delta=1e-5)
    eps_fixed = make_accountant("prv").compose(frec.event, count=10).get_epsilon(delta=1e-5)
    assert eps_poisson < eps_fixed / 2


def test_refuses_unprotected_names_and_sample_weighting() -> None:
    with pytest.raises(InvalidParameterError, match=r"\['tau'\] would be released"):
        _central().aggregate(
            1, {0: {"delta": np.zeros(3), "weight": np.ones(1), "tau": np.ones(1)}}, Channel()
        )
    with pytest.raises(InvalidParameterError, match="uniform weighting"):
        _central().aggregate(1, {0: {"delta": np.zeros(3), "weight": np.array([37.0])}}, Channel())


def _distributed(**kw):
    args = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "delta": 1e-5, "seed": 11}
    args.update(kw)
    return DistributedGaussianSum(**args)


def test_distributed_noise_variance_and_the_server_never_sees_an_unnoised_sum() -> None:
    d, n = 4000, 6
    contribs = _contribs(n, d, scale=0.01)
    transcript = Transcript(keep_payloads=True)
    s = _distributed()
    res = s.aggregate(3, contribs, Channel(transcript))
    plan = s.last_plan
    assert plan is not None
    # What the server decoded, minus the true (quantised) sum, is the noise:
    # discrete Gaussian with variance n·σ_dev² = (z·Δ)² in integer units.
    true = sum(v["delta"] for v in contribs.values())
    noise_int = s.last_integer_sum - np.rint(true * plan.scale)
    assert noise_int.var() == pytest.approx(plan.target_variance, rel=0.06)
    assert plan.target_variance == pytest.approx((1.0 * plan.l2_sensitivity) ** 2)
    # In float units the noise has std z·Δ/scale ≈ z·C (Δ ≈ C·scale).
    assert (res.sums["delta"] - true).std() == pytest.approx(1.0, rel=0.06)
    # The un-noised sum is nowhere: the decoded sum is far from it, and the server
    # only received SecAgg+ protocol messages (no individual contribution).
    assert np.linalg.norm(res.sums["delta"] - true) > 0.5 * math.sqrt(d)
    msgs = transcript.server_view()
    assert msgs and all(isinstance(m, MaskedUpload) for m in msgs)
    # Each device's masked input is not its noisy integer vector either.
    (rec,) = res.privacy_records
    assert rec.event == plan.event(num_survivors=n) and rec.devices == tuple(map(str, range(n)))
    assert res.sums["weight"].tolist() == [float(n)]


def test_dropouts_leave_fewer_noise_shares_and_are_accounted_with_the_survivors() -> None:
    d, n = 300, 8
    contribs = _contribs(n, d, scale=0.01)
    from secrelay.federated.secure import SecureSumSettings

    full = _distributed().aggregate(1, contribs, Channel())
    # 2 dropouts of 8 exceed the malicious-server protocol's consistency quorum
    # (7 of 8 must vote); the noise-share accounting is the same under the
    # honest-but-curious protocol, which tolerates them.
    dropped = _distributed(settings=SecureSumSettings(active_security=False)).aggregate(
        1, contribs, Channel(), dropouts={2: "masked_input", 5: "share_keys"}
    )
    (ev_full,) = (r.event for r in full.privacy_records)
    (ev_drop,) = (r.event for r in dropped.privacy_records)
    assert isinstance(ev_drop, DistributedDiscreteGaussianEvent)
    assert ev_full.num_shares == 8 and ev_drop.num_shares == 6
    assert ev_drop.per_device_variance == ev_full.per_device_variance
    eps = [make_accountant("rdp").compose(e).get_epsilon(delta=1e-5) for e in (ev_full, ev_drop)]
    assert eps[1] > eps[0]
    assert dropped.privacy_records[0].devices == ("0", "1", "3", "4", "6", "7")
    # Colluders' shares are never counted.
    col = _distributed(num_colluders=2).aggregate(1, contribs, Channel())
    assert col.privacy_records[0].event.num_shares == n - 2


def test_threshold_policy_guarantees_the_target_variance_with_dropouts() -> None:
    d, n = 300, 10
    s = _distributed(noise_shares="threshold")
    plan = s.plan(n, d)
    t = s.threshold(n, d)
    assert plan.min_survivors == t < n
    # Any completed round (>= t survivors) carries at least the target variance.
    assert plan.total_variance(num_survivors=t) == pytest.approx(plan.target_variance)


def test_modulus_headroom_holds_the_noisy_shares() -> None:
    s = _distributed(noise_multiplier=3.0)
    plan = s.plan(4, 1000)
    bits = s.precision_bits(plan)
    bound = plan.l2_sensitivity + 12 * math.sqrt(plan.per_device_variance)
    assert 2 ** (bits - 1) > bound >= 2 ** (bits - 2)


def test_planned_record_is_the_worst_case() -> None:
    d = 200
    s = _distributed()
    sampled = list(range(10))
    worst = s.planned_record(1, sampled, dimension=d, min_survivors=1, dropouts=True)
    best = s.planned_record(1, sampled, dimension=d, min_survivors=1, dropouts=False)
    assert worst is not None and best is not None
    assert worst.event.rho >= best.event.rho
    actual = s.aggregate(1, _contribs(10, d), Channel(), dropouts={1: "masked_input"})
    assert actual.privacy_records[0].event.rho <= worst.event.rho
    assert best.event == s.plan(10, d).event(num_survivors=10)
