"""Empirical ε audits: a lower bound never above the accountant's upper bound (the
check that fails on a broken mechanism), and the known ceilings."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.audit import CanaryAudit, audit_gaussian_sum, insert_canaries, one_run_guesses
from secrelay import load_config
from secrelay.data import make_synthetic


@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_gaussian_sum_lower_bound_never_exceeds_the_accountant(z):
    """DP-FedAvg's central Gaussian release (protocols.dp.gaussian_mechanism) audited
    with 20,000 trials: the 95 % lower bound must stay below the PRV upper bound.
    This is the test that fails if the mechanism or the accounting is wrong."""
    r = audit_gaussian_sum(noise_multiplier=z, trials=20_000, seed=1)
    assert r.epsilon_lower <= r.epsilon_upper, r.as_dict()
    assert r.regime != "violation"
    assert r.epsilon_lower > 0.2 * r.epsilon_upper  # the audit is not vacuous
    assert r.design == "many-runs" and r.unit == "user"


def test_a_broken_mechanism_is_caught():
    """Noise ten times too small: the lower bound exceeds the claimed upper bound."""

    def broken(sums, gen):
        return sums + 0.1 * gen.normal(size=sums.shape)

    r = audit_gaussian_sum(noise_multiplier=1.0, trials=20_000, mechanism=broken)
    assert r.epsilon_lower > r.epsilon_upper
    assert r.regime == "violation"


def test_one_run_guesses_perfect_and_random():
    rng = np.random.default_rng(0)
    inc = rng.random(1000) < 0.5
    eps, counts = one_run_guesses(inc.astype(float) + rng.random(1000) * 0.1, inc, delta=1e-5)
    assert counts["correct"] == counts["guesses"] and eps > 3
    eps, _ = one_run_guesses(rng.random(1000), inc, delta=1e-5)
    assert eps == 0.0


def test_insert_canaries_adds_fresh_items_to_one_device():
    base = make_synthetic(n_users=5, samples_per_user=40, n_items=50, seed=0)
    cd = insert_canaries(base, canaries=30, unit="example", seed=1)
    item = base.schema.item_id_field
    assert cd.data.schema[item].vocab_size == base.schema[item].vocab_size + 30
    assert len(cd.data) == len(base) + int(cd.included.sum())
    extra = cd.data.subset(np.arange(len(base), len(cd.data)))
    assert set(extra.column(item).tolist()) == set(cd.canary_items[cd.included].tolist())
    assert set(extra.user.tolist()) == {int(cd.owners[0])}
    users = insert_canaries(base, canaries=10, unit="user", rows_per_canary=2, seed=1)
    assert users.data.n_users == base.n_users + int(users.included.sum())


def _cfg(**privacy):
    return load_config(None).replace(
        run={"seed": 0},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1},
        local={"epochs": 3, "batch_size": 32, "lr": 0.05, "optimizer": "sgd"},
        federated={"rounds": 1, "clients_per_round": 6},
        privacy={"randomness": "reproducible", **privacy},
    )


def test_canary_audit_of_a_real_run(tmp_path):
    """One-run audit through secrelay.simulate: without DP the canaries are found (the
    bound reaches the design's ceiling region); with DP-SGD it stays below the ledger's ε."""
    base = make_synthetic(n_users=6, samples_per_user=150, n_items=60, seed=0)
    plain = CanaryAudit(_cfg(), base, unit="example", canaries=200).run(tmp_path / "plain")
    assert plain.epsilon_lower > 1.0 and plain.epsilon_upper == float("inf")
    assert plain.counts["correct"] == plain.counts["guesses"]
    private = CanaryAudit(
        _cfg(dp_sgd=True, local_noise_multiplier=0.8), base, unit="example", canaries=200
    ).run(tmp_path / "dp")
    assert np.isfinite(private.epsilon_upper)
    assert private.epsilon_lower <= private.epsilon_upper
    assert private.ceiling == pytest.approx(plain.ceiling)
