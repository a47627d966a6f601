"""The plug-in contract: the privacy check runs first and reports every problem at
once, privacy is composed when the loop is built, registries share one rule, and
``secrelay.simulate`` runs without TOML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import secrelay
import secrelay.experiment as experiment
from protocols.errors import ConfigError, InvalidParameterError, ProtocolAbort
from protocols.registry import Registry
from secrelay.config import PrivacyConfig, RunConfig, load_config
from secrelay.data import make_synthetic
from secrelay.federated.secure import SecureSum
from secrelay.methods import METHODS, FederatedMethod, Method
from secrelay.privacy.distributed_dp import DistributedGaussianSum
from secrelay.privacy.plan import PrivacyPlan
from secrelay.privacy.user_dp import CentralGaussianSum, ClipUpdate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = {
    "data_options": {"n_users": 30, "samples_per_user": 24},
    "model_options": {"hidden_units": [8]},
    "cloud": {"epochs": 1},
    "local": {"epochs": 1, "batch_size": 16},
}


def _no_data(*_a, **_k):
    raise AssertionError("data was loaded before the privacy check")


def test_every_problem_is_reported_at_once_before_data_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(experiment, "prepare_data", _no_data)
    cfg = load_config(
        method={"name": "metaua", "options": {"weighting": "samples", "train_on": "support"}},
        privacy={
            "dp_sgd": True,
            "user_level_dp": True,
            "clipping_norm": 1.0,
            "noise_multiplier": 1.0,
            "local_noise_multiplier": 1.0,
            "query_ldp": "gaussian",
            "query_ldp_epsilon": 1.0,
        },
    )
    with pytest.raises(ConfigError) as err:
        experiment.run(cfg, tmp_path / "r", progress=False, log=lambda _: None)
    msg = str(err.value)
    assert "train_on = 'all'" in msg
    assert "weighting = 'uniform'" in msg
    assert "privacy.query_ldp" in msg
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_user_level_dp_follows_the_strategy_release_spec(monkeypatch, tmp_path):
    """Any strategy whose release_spec covers its sums is accepted (no name list);
    one without a release is refused before data loads, naming release_spec."""
    monkeypatch.setattr(experiment, "prepare_data", _no_data)
    priv = {"user_level_dp": True, "clipping_norm": 1.0, "noise_multiplier": 1.0}
    ok = load_config(strategy={"name": "fedprox", "params": {"weighting": "uniform"}}, privacy=priv)
    assert experiment.check_config(ok) is FederatedMethod
    nova = load_config(
        strategy={"name": "fednova", "params": {"weighting": "uniform"}}, privacy=priv
    )
    with pytest.raises(ConfigError, match="release_spec"):
        experiment.check_config(nova)
    samples = load_config(strategy={"name": "fedavg"}, privacy=priv)
    with pytest.raises(ConfigError, match="weighting = 'uniform'"):
        experiment.check_config(samples)


def test_plan_composes_dp_when_the_loop_is_built():
    from secrelay.federated.client import DeviceData, ModelSpec, PlainTrainer, flat_parameters
    from secrelay.federated.loop import RoundConfig
    from secrelay.federated.strategies import make_strategy
    from secrelay.training import TrainConfig

    ds = make_synthetic(n_users=6, samples_per_user=8, seed=0)
    devices = {u: DeviceData(u, d, d) for u, d in ds.split_by_user().items()}
    spec = ModelSpec("lr", ds.schema, (("embedding_dim", 2),))
    strategy = make_strategy("fedavg", weighting="uniform")
    strategy.initialize({"global": flat_parameters(spec.build())})
    program = strategy.client_program(spec, PlainTrainer(TrainConfig(epochs=1)))
    for secure, wrapper in ((False, CentralGaussianSum), (True, DistributedGaussianSum)):
        plan = PrivacyPlan(
            PrivacyConfig(
                user_level_dp=True,
                clipping_norm=1.0,
                noise_multiplier=1.0,
                secure_aggregation=secure,
            )
        )
        loop = plan.build_loop(
            strategy, program, devices, spec, config=RoundConfig(4), seed=0, rounds=2
        )
        assert isinstance(loop.sum_protocol, wrapper)
        assert isinstance(loop.program.transforms[-1], ClipUpdate)
        if secure:  # the distributed wrapper wraps a SecureSum, built once
            assert isinstance(loop.sum_protocol.inner, SecureSum)
    assert program.transforms == ()  # the given program is never mutated


def test_protocol_abort_carries_typed_privacy_records():
    exc = ProtocolAbort("collect", "too few")
    assert exc.privacy_records == ()
    exc.add_privacy_records(["a"])  # type: ignore[list-item]
    exc.add_privacy_records(["b"])  # type: ignore[list-item]
    assert exc.privacy_records == ("a", "b")


def test_registries_share_one_rule():
    reg: Registry[int] = Registry("widget")
    reg.register("w", 1)
    with pytest.raises(InvalidParameterError, match="already registered; pass force=True"):
        reg.register("w", 2)
    reg.register("w", 2, force=True)
    assert reg.get("w") == 2
    with pytest.raises(InvalidParameterError, match=r"unknown widget 'x'; choose one of \['w'\]"):
        reg.get("x")
    with pytest.raises(InvalidParameterError, match="already registered"):
        secrelay.register_method(FederatedMethod)
    with pytest.raises(InvalidParameterError, match="Method subclass"):
        METHODS.register("bad", object)  # type: ignore[arg-type]


def test_simulate_runs_without_toml_and_matches_run(tmp_path: Path):
    # Equal runs need reproducible randomness (the default draws noise and samples
    # from OS entropy).
    plan = PrivacyPlan(
        PrivacyConfig(
            user_level_dp=True,
            clipping_norm=0.5,
            noise_multiplier=1.0,
            randomness="reproducible",
        )
    )
    res = secrelay.simulate(
        strategy="fedavg",
        strategy_params={"weighting": "uniform"},
        privacy=plan,
        rounds=2,
        federated={"sampling": "poisson", "sample_rate": 0.3},
        run_dir=tmp_path / "sim",
        **TINY,
    )
    assert (tmp_path / "sim" / "privacy_ledger.jsonl").exists()
    cfg = RunConfig.from_dict(json.loads((tmp_path / "sim" / "config.json").read_text()))
    again = experiment.run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert again.records == res.records


def test_simulate_in_memory_data_needs_it_again_to_resume(tmp_path: Path):
    ds = make_synthetic(n_users=30, samples_per_user=24, seed=3)
    tiny = {k: v for k, v in TINY.items() if k != "data_options"}
    secrelay.simulate(data=ds, rounds=2, run_dir=tmp_path / "m", **tiny)
    with pytest.raises(ConfigError, match="passed in memory"):
        experiment.resume(tmp_path / "m", progress=False, log=lambda _: None)


def test_simulate_refuses_what_is_not_a_method():
    with pytest.raises(ConfigError, match="Method subclass"):
        secrelay.simulate(method=dict)  # type: ignore[arg-type]
    assert issubclass(secrelay.Method, Method)
