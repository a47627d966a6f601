"""CoDA with example-level DP-SGD (privacy.dp_sgd): ledger records match the steps
taken and the public plan, budgets refuse a run before any device trains, the
validation gate and user-level DP are refused, and per-example clipping bounds one
sample's influence."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protocols.dp import (
    GaussianEvent,
    PoissonSampledEvent,
    PrivacyLedger,
    epsilon_for,
    make_accountant,
)
from protocols.errors import BudgetExceededError, ConfigError, InvalidParameterError
from secrelay.config import RunConfig
from secrelay.data import Field, Schema
from secrelay.data.dataset import CTRDataset
from secrelay.experiment import run
from secrelay.federated.client import flat_parameters
from secrelay.methods import prepare_data
from secrelay.models.base import make_model
from secrelay.privacy import dpsgd
from secrelay.relay.coda import (
    CoDADevice,
    CoDAOptions,
    DPSGDSettings,
    calibrated_noise_multiplier,
    filter_matched_private,
    matched_rows_bound,
    plan_dp_uses,
    private_train,
)
from secrelay.training import TrainConfig, make_optimizer

OPTIONS: dict[str, Any] = {"k": 4, "gate": False, "max_devices": 3, "baselines": False}
PRIVACY: dict[str, Any] = {"dp_sgd": True, "local_noise_multiplier": 1.0, "accountant": "rdp"}


def _cfg(options: dict[str, Any] | None = None, privacy: dict[str, Any] | None = None) -> RunConfig:
    return RunConfig.from_dict(
        {
            "run": {"name": "coda-dp", "seed": 0, "progress": False},
            "data": {"name": "synthetic", "options": {"n_users": 24, "samples_per_user": 30}},
            "split": {"alpha": 0.3},
            "model": {"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
            "cloud": {"epochs": 1, "batch_size": 64},
            "local": {"epochs": 1, "batch_size": 16, "lr": 0.01},
            "method": {"name": "coda", "options": {**OPTIONS, **(options or {})}},
            "privacy": {**PRIVACY, **(privacy or {})},
        }
    )


def _run(tmp_path: Path, cfg: RunConfig) -> Any:
    return run(cfg, tmp_path / "r", progress=False, log=lambda s: None)


def _key(r: Any) -> tuple[str, str, float, int, float]:
    return (r.devices[0], r.mechanism, r.sample_rate, r.steps, r.noise_multiplier)


def _planned(cfg: RunConfig, devices: list[str]) -> list[tuple[str, str, float, int, float]]:
    data = prepare_data(cfg)
    o = CoDAOptions.from_mapping(cfg.method.options)
    train = TrainConfig(epochs=cfg.local.epochs, batch_size=cfg.local.batch_size)
    z = cfg.privacy.local_noise_multiplier
    out = []
    for d in devices:
        n = min(len(data.devices[int(d)].train), o.local_capacity)
        n_sigmas = len({o.sigma, *o.sigma_sweep})
        for u in plan_dp_uses(n, o, train, n_sigmas=n_sigmas):
            name = f"{u.mechanism}/dp_sgd[ghost]"
            out += [(d, name, u.sample_rate, u.steps, z)] * u.count
    return sorted(out)


def _device(data: Any, dev: int, o: CoDAOptions, train: TrainConfig, uses: Any) -> CoDADevice:
    def build() -> torch.nn.Module:
        return make_model("dnn", data.full.schema, embedding_dim=4, hidden_units=[8], seed=0)

    return CoDADevice(
        data.devices[dev],
        flat_parameters(build()),
        o,
        model_builder=build,
        train_config=train,
        seed=3,
        dp=DPSGDSettings(max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5),
        dp_uses=uses,
    )


# --- the ledger of a DP run ---------------------------------------------------------------


def test_run_appends_one_record_per_training_equal_to_the_plan(tmp_path: Path) -> None:
    cfg = _cfg({"sigma_sweep": [0.0], "baselines": True})
    res = _run(tmp_path, cfg)
    ledger = PrivacyLedger.load(tmp_path / "r" / "privacy_ledger.jsonl")
    devices = sorted(ledger.devices(unit="example"), key=int)
    assert len(devices) == res.records[-1]["devices"] == 3
    assert all(r.unit == "example" and len(r.devices) == 1 for r in ledger.records)
    # Per device: Local, the classifier and one CTR training per σ (0.2 and 0), exactly
    # as planned from public sizes (every device here received matched rows).
    assert res.records[-1]["n_matched"] > 0
    assert sorted(_key(r) for r in ledger.records) == _planned(cfg, devices)
    kinds = collections.Counter(r.mechanism.split("/")[0] for r in ledger.records)
    assert kinds == {"coda_local": 3, "coda_classifier": 3, "coda_ctr": 6}
    assert "local_gate/gauc" not in res.records[-1]  # the gate baseline needs the gate


def test_records_count_the_optimizer_steps_actually_taken(monkeypatch) -> None:
    taken = collections.Counter()

    def counting(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        opt = make_optimizer(model, config)
        key = len(taken)
        taken[key] = 0

        def hook(*_: Any) -> None:
            taken[key] += 1

        opt.register_step_post_hook(hook)
        return opt

    monkeypatch.setattr(dpsgd, "make_optimizer", counting)  # the one DP-SGD path
    cfg = _cfg({"max_devices": 1, "sigma_sweep": [0.5]})
    data = prepare_data(cfg)
    dev = sorted(d for d, dd in data.devices.items() if len(dd.test))[0]
    o = CoDAOptions.from_mapping(cfg.method.options)
    n = len(data.devices[dev].train)
    train = TrainConfig(epochs=2, batch_size=4, lr=0.01)
    uses = plan_dp_uses(n, o, train, n_sigmas=2)
    device = _device(data, dev, o, train, uses)
    x, y = data.cloud.x[:30], data.cloud.y[:30]
    device.matched.insert(np.arange(10_000, 10_030), x, y, day=0)
    device.learn((0.2, 0.5))
    records = device.privacy_records
    assert [r.mechanism.split("/")[0] for r in records] == [
        "coda_classifier",
        "coda_ctr",
        "coda_ctr",
    ]
    assert [r.steps for r in records] == [taken[k] for k in sorted(taken)]
    assert all(r.steps > 0 for r in records)


def test_plan_does_not_depend_on_how_many_matched_rows_arrive() -> None:
    o = CoDAOptions.from_mapping(OPTIONS)
    cap = matched_rows_bound(o)
    assert cap == 12 * 25 + (40 - 25)  # one day of 12 batches, the last ≤ 40 rows
    uses = {u.mechanism: u for u in plan_dp_uses(50, o, TrainConfig(batch_size=32), n_sigmas=1)}
    assert uses["coda_ctr"].steps_per_epoch == 2 + 10  # ⌈50/32⌉ + ⌈315/32⌉
    assert uses["coda_classifier"].steps_per_epoch == 2 + 4  # negatives ≤ round(315/3)
    # At most one step per local row: the expected batch never drops below 1.
    tiny = {u.mechanism: u for u in plan_dp_uses(5, o, TrainConfig(batch_size=32), n_sigmas=1)}
    assert tiny["coda_ctr"].steps_per_epoch == 5
    # private_train spends the planned record whatever the training set's size.
    schema = Schema(
        (Field("user_id", "user", 2), Field("item", "item", 9)), user_id_field="user_id"
    )
    records = []
    for rows in (12, 40):
        ds = CTRDataset(
            schema,
            np.column_stack([np.ones(rows, np.int64), np.arange(rows) % 9]),
            (np.arange(rows) % 2).astype(np.float32),
            np.zeros(rows, np.int64),
            np.arange(rows),
        )
        model = make_model("lr", schema, seed=0)
        res = private_train(
            model,
            ds,
            TrainConfig(epochs=2, batch_size=4),
            steps_per_epoch=6,
            dp=DPSGDSettings(max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5),
            round=1,
            device_id="7",
            mechanism="coda_ctr",
            generator=torch.Generator().manual_seed(0),
        )
        records.append(res.record)
    assert records[0] == records[1]
    assert records[0].steps == 12 and records[0].sample_rate == pytest.approx(1 / 6)


def test_device_without_matched_rows_spends_less_than_planned(tmp_path: Path) -> None:
    cfg = _cfg({"max_devices": 1})
    data = prepare_data(cfg)
    dev = sorted(d for d, dd in data.devices.items() if len(dd.test))[0]
    o = CoDAOptions.from_mapping(cfg.method.options)
    train = TrainConfig(epochs=1, batch_size=16)
    uses = plan_dp_uses(len(data.devices[dev].train), o, train, n_sigmas=1)
    device = _device(data, dev, o, train, uses)
    out = device.learn((0.2,))
    assert out["n_matched"] == 0
    assert [r.mechanism for r in device.privacy_records] == ["coda_ctr/dp_sgd[ghost]"]


# --- budgets --------------------------------------------------------------------------------


def test_example_budget_refuses_the_run_before_any_device_trains(tmp_path: Path) -> None:
    cfg = _cfg(privacy={"example_epsilon": 0.5})
    with pytest.raises(
        BudgetExceededError,
        match=r"refused round 1 before it ran.*example-level ε would be .*privacy\.example_epsilon",
    ):
        _run(tmp_path, cfg)
    rd = tmp_path / "r"
    ledger = rd / "privacy_ledger.jsonl"
    assert not ledger.exists() or ledger.read_bytes() == b""
    lines = (rd / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [0]
    assert (rd / "checkpoint.pt").exists() and not (rd / "summary.json").exists()


def test_a_budget_that_covers_the_plan_lets_the_run_finish(tmp_path: Path) -> None:
    cfg = _cfg({"max_devices": 2}, privacy={"example_epsilon": 200.0})
    res = _run(tmp_path, cfg)
    assert res.final["complete"]
    ledger = PrivacyLedger.load(tmp_path / "r" / "privacy_ledger.jsonl")
    for d in ledger.devices(unit="example"):
        assert 0 < ledger.epsilon(device=d, delta=1e-5, accountant="rdp") <= 200.0


def test_calibration_spends_at_most_the_target_over_all_planned_uses() -> None:
    uses = ((0.25, 8), (0.5, 4))
    z = calibrated_noise_multiplier(uses, 3.0, 1e-5, "rdp")
    # The composition of both trainings at z is within (0.995 · target, target].
    acc = make_accountant("rdp")
    for q, steps in uses:
        acc.compose(
            PoissonSampledEvent(sample_rate=q, event=GaussianEvent(noise_multiplier=z)),
            count=steps,
        )
    eps = acc.get_epsilon(delta=1e-5)
    assert 0.995 * 3.0 <= eps <= 3.0
    # Each training alone spends less than the whole.
    assert (
        epsilon_for(noise_multiplier=z, sample_rate=0.25, steps=8, delta=1e-5, accountant="rdp")
        < eps
    )


# --- what DP-SGD cannot cover is refused ------------------------------------------------


def test_dp_sgd_refuses_the_validation_gate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method\.options\.gate = false"):
        _run(tmp_path, _cfg({"gate": True}))
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
    with pytest.raises(InvalidParameterError, match="gate"):
        CoDADevice(
            None,  # type: ignore[arg-type]  (refused before the data is read)
            np.zeros(1),
            CoDAOptions.from_mapping({"gate": True}),
            model_builder=None,
            train_config=TrainConfig(),
            seed=0,
            dp=DPSGDSettings(max_grad_norm=1.0, noise_multiplier=1.0, delta=1e-5),
        )


@pytest.mark.parametrize(
    ("privacy", "match"),
    [
        (
            {"user_level_dp": True, "clipping_norm": 1.0, "noise_multiplier": 1.0},
            r"privacy\.user_level_dp .*user vector",
        ),
        ({"secure_aggregation": True}, r"privacy\.secure_aggregation"),
        ({"grad_sample_mode": "sparse"}, r"privacy\.grad_sample_mode = 'sparse'"),
    ],
)
def test_mechanisms_coda_cannot_honour_are_refused(
    tmp_path: Path, privacy: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, _cfg(privacy=privacy))
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_ungated_variants_need_the_gate() -> None:
    with pytest.raises(ConfigError, match=r"method\.options\.ungated"):
        CoDAOptions.from_mapping({"gate": False, "ungated": True})


def test_non_private_run_without_the_gate(tmp_path: Path) -> None:
    cfg = _cfg({"baselines": True}, privacy={"dp_sgd": False, "local_noise_multiplier": None})
    res = _run(tmp_path, cfg)
    last = res.records[-1]
    assert "local/gauc" in last and "local_gate/gauc" not in last
    assert "accepted_0.2" not in last  # no gate steps
    assert not (tmp_path / "r" / "privacy_ledger.jsonl").exists()


# --- clipping bounds one sample's influence -----------------------------------------------


def test_one_adversarial_sample_moves_the_model_by_at_most_lr_times_c() -> None:
    schema = Schema(
        (Field("user_id", "user", 2), Field("item", "item", 9), Field("cat", "item", 4)),
        user_id_field="user_id",
    )
    x = np.array([[1, 3, 2]])
    ds = CTRDataset(schema, x, np.ones(1, np.float32), np.zeros(1, np.int64), np.arange(1))
    c, lr = 0.01, 1.0

    def adversarial_model() -> torch.nn.Module:
        model = make_model("lr", schema, seed=0)
        with torch.no_grad():  # a confidently wrong model: a huge per-example gradient
            for p in model.parameters():
                p.fill_(-5.0)
        return model

    def moved(model: torch.nn.Module) -> float:
        before = torch.cat([p.detach().clone().ravel() for p in adversarial_model().parameters()])
        after = torch.cat([p.detach().ravel() for p in model.parameters()])
        return float(torch.linalg.vector_norm(after - before))

    plain = adversarial_model()
    opt = torch.optim.SGD(plain.parameters(), lr=lr)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        plain(torch.tensor(x)), torch.ones(1)
    )
    loss.backward()
    opt.step()
    assert moved(plain) > 100 * c
    for mode in ("ghost", "hooks"):
        private = adversarial_model()
        private_train(
            private,
            ds,
            TrainConfig(epochs=1, batch_size=1, lr=lr, optimizer="sgd"),
            steps_per_epoch=1,  # q = 1: the row is in the batch
            dp=DPSGDSettings(
                max_grad_norm=c, noise_multiplier=1e-6, delta=1e-5, grad_sample_mode=mode
            ),
            round=1,
            device_id="0",
            mechanism="probe",
            generator=torch.Generator().manual_seed(0),
        )
        assert 0.5 * lr * c < moved(private) <= lr * c * 1.001


def test_private_classifier_scores_matched_rows(tmp_path: Path) -> None:
    schema = Schema(
        (Field("user_id", "user", 5), Field("item", "item", 9)), user_id_field="user_id"
    )
    rng = np.random.default_rng(0)
    local_x = np.column_stack([np.full(40, 1), rng.integers(1, 4, 40)])
    matched_x = np.column_stack([np.zeros(60, int), rng.integers(1, 9, 60)])

    def ds(x: np.ndarray) -> CTRDataset:
        n = len(x)
        return CTRDataset(schema, x, np.zeros(n, np.float32), np.zeros(n, np.int64), np.arange(n))

    res = filter_matched_private(
        ds(local_x),
        ds(matched_x),
        steps_per_epoch=4,
        dp=DPSGDSettings(max_grad_norm=1.0, noise_multiplier=0.5, delta=1e-5),
        round=1,
        device_id="3",
        sigma=0.5,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.scores.shape == (60,) and ((res.scores >= 0) & (res.scores <= 1)).all()
    assert (res.keep == (res.scores >= 0.5)).all()
    assert res.record.mechanism == "coda_classifier/dp_sgd[ghost]"
    assert res.record.devices == ("3",) and res.record.steps == 5 * 4
