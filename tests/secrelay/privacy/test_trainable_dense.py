"""``[local] trainable = "dense"``: devices train only the dense layers, the embedding
tables stay exactly as downloaded, and user-level DP noises only what a device can
change (the released sum is exactly 0 on the tables, at no privacy cost)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.errors import ConfigError, InvalidParameterError
from secrelay.config import PrivacyConfig, load_config
from secrelay.federated.client import ModelSpec, PlainTrainer, flat_parameters
from secrelay.federated.loop import RoundConfig
from secrelay.federated.strategies import make_strategy
from secrelay.privacy.plan import PrivacyPlan
from secrelay.privacy.user_dp import PACKED_NAME, fedavg_spec, pack_contributions, unpack_sum
from secrelay.training import TrainConfig, train_epochs, trainable_mask


def _dense_train(spec: ModelSpec, devices, trainable: str):  # type: ignore[no-untyped-def]
    model = spec.build()
    before = flat_parameters(model)
    train_epochs(
        model,
        devices[0].train,
        TrainConfig(epochs=3, batch_size=4, lr=0.1, trainable=trainable),
        generator=torch.Generator().manual_seed(0),
    )
    return model, flat_parameters(model) - before


def test_dense_training_leaves_the_embedding_tables_bit_identical(make_devices, dnn_spec) -> None:
    devices = make_devices()
    model, delta = _dense_train(dnn_spec, devices, "dense")
    mask = trainable_mask(model, "dense")
    assert mask.shape == delta.shape and 0 < mask.sum() < mask.size
    assert np.all(delta[~mask] == 0.0)  # the tables: exactly unchanged
    assert np.any(delta[mask] != 0.0)  # the dense layers trained
    assert all(p.requires_grad for p in model.parameters())  # restored afterwards
    _, all_delta = _dense_train(dnn_spec, devices, "all")
    assert np.any(all_delta[~mask] != 0.0)  # with "all" the tables train too


def test_support_packs_only_what_devices_can_change_and_refuses_the_rest() -> None:
    d = 10
    mask = np.zeros(d, dtype=bool)
    mask[6:] = True
    spec = fedavg_spec(1.0, d).with_model_support(mask)
    assert spec.dimension == 4
    rng = np.random.default_rng(0)
    contribs = {}
    for dev in range(3):
        delta = np.zeros(d)
        delta[6:] = rng.normal(0, 0.1, 4)
        contribs[dev] = {"delta": delta, "weight": np.array([1.0])}
    packed, shapes = pack_contributions(contribs, spec, 1.0)
    assert all(p[PACKED_NAME].shape == (4,) for p in packed.values())
    total = sum(p[PACKED_NAME] for p in packed.values()) + 0.5  # stand-in noise
    sums = unpack_sum(total, spec, 1.0, shapes, 3.0)
    assert np.all(sums["delta"][:6] == 0.0)  # exact zeros off the support, no noise
    expected = sum(c["delta"][6:] for c in contribs.values()) + 0.5
    assert np.allclose(sums["delta"][6:], expected)
    leaky = {**contribs, 3: {"delta": np.full(d, 0.01), "weight": np.array([1.0])}}
    with pytest.raises(InvalidParameterError, match="outside its support"):
        pack_contributions(leaky, spec, 1.0)


def test_dp_fedavg_with_dense_training_releases_no_noise_on_the_tables(
    make_devices, dnn_spec
) -> None:
    devices = make_devices(n_devices=8)
    privacy = PrivacyConfig(
        user_level_dp=True, clipping_norm=0.5, noise_multiplier=1.0, randomness="reproducible"
    )
    plan = PrivacyPlan(privacy, run_id="dense", seed=3, clients_per_round=8)
    start = flat_parameters(dnn_spec.build())
    mask = trainable_mask(dnn_spec.build(), "dense")
    moved = {}
    for trainable in ("dense", "all"):
        strategy = make_strategy("fedavg", weighting="uniform")
        strategy.initialize({"global": start.copy()})
        trainer = PlainTrainer(TrainConfig(epochs=1, batch_size=4, lr=0.1, trainable=trainable))
        loop = plan.build_loop(
            strategy,
            strategy.client_program(dnn_spec, trainer),
            devices,
            dnn_spec,
            config=RoundConfig(clients_per_round=8),
            seed=3,
            rounds=2,
        )
        for r in (1, 2):
            record = loop.run_round(r, evaluate=False)
            assert record.privacy_records  # the release is still accounted
        moved[trainable] = strategy.models["global"] - start
    assert np.all(moved["dense"][~mask] == 0.0)  # no noise reached the tables
    assert np.any(moved["dense"][mask] != 0.0)
    assert np.any(moved["all"][~mask] != 0.0)  # noise (and training) everywhere


def test_dense_training_is_refused_with_dp_sgd(make_devices, dnn_spec) -> None:
    plan = PrivacyPlan(PrivacyConfig(dp_sgd=True, local_noise_multiplier=1.0))
    strategy = make_strategy("fedavg", weighting="uniform")
    strategy.initialize({"global": flat_parameters(dnn_spec.build())})
    trainer = PlainTrainer(TrainConfig(trainable="dense"))
    problems = plan.loop_problems(strategy, strategy.client_program(dnn_spec, trainer))
    assert any(
        "local.trainable = 'dense' is not supported with privacy.dp_sgd" in p for p in problems
    )


def test_config_key() -> None:
    assert load_config(local={"trainable": "dense"}).local.trainable == "dense"
    with pytest.raises(ConfigError, match=r"local\.trainable must be one of"):
        load_config(local={"trainable": "embeddings"})
    with pytest.raises(InvalidParameterError, match="`trainable` must be one of"):
        TrainConfig(trainable="sparse")  # type: ignore[arg-type]


def test_seen_training_moves_only_the_given_rows(make_devices, dnn_spec) -> None:
    devices = make_devices()
    model = dnn_spec.build()
    before = flat_parameters(model)
    used = tuple(
        int(r)
        for r in np.unique(
            devices[0].train.x + np.asarray(devices[0].train.schema.column_vocab_offsets())
        )
    )
    rows = used[: len(used) // 2]  # half the rows this device's data uses
    train_epochs(
        model,
        devices[0].train,
        TrainConfig(epochs=3, batch_size=4, lr=0.1, trainable="seen", trainable_rows=rows),
        generator=torch.Generator().manual_seed(0),
    )
    delta = flat_parameters(model) - before
    mask = trainable_mask(model, "seen", rows)
    assert np.all(delta[~mask] == 0.0)  # every other row (and nothing else) unchanged
    assert np.any(delta[mask] != 0.0)
    table = model.embedding.embedding.weight.shape
    emb_delta = delta[: table[0] * table[1]].reshape(table)
    moved_rows = set(np.flatnonzero(np.any(emb_delta != 0.0, axis=1)).tolist())
    assert moved_rows and moved_rows <= set(rows)


def test_seen_needs_its_rows() -> None:
    with pytest.raises(InvalidParameterError, match="trainable_rows"):
        TrainConfig(trainable="seen")
    with pytest.raises(InvalidParameterError, match="trainable_rows"):
        TrainConfig(trainable_rows=(1, 2))


def test_a_dp_run_training_seen_rows_releases_nothing_off_its_support(tmp_path) -> None:
    # The wrapper refuses any contribution that is non-zero off the support, so a run
    # that completes shows the devices never moved a row the cloud did not see.
    from secrelay.experiment import run
    from secrelay.methods.cloud import seen_rows
    from secrelay.methods.data import prepare_data

    cfg = load_config(
        run={"name": "seen", "seed": 2, "progress": False},
        data={"name": "synthetic", "options": {"n_users": 16, "samples_per_user": 20}},
        model={"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
        cloud={"epochs": 1},
        local={"epochs": 1, "batch_size": 8, "trainable": "seen"},
        federated={"rounds": 2, "clients_per_round": 6},
        strategy={"name": "fedavg", "params": {"weighting": "uniform"}},
        privacy={
            "user_level_dp": True,
            "clipping_norm": 0.5,
            "noise_multiplier": 1.0,
            "randomness": "reproducible",
        },
    )
    data = prepare_data(cfg)
    rows = seen_rows(data.cloud)
    total = data.full.schema.total_vocab
    assert 0 < len(rows) < total  # the devices' new users are rows the cloud never saw
    result = run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert result.final["complete"] and result.epsilon is not None


def test_seen_is_refused_before_the_run_by_methods_that_cannot_supply_the_rows(
    tmp_path,
) -> None:
    from secrelay.experiment import run

    cfg = load_config(
        run={"name": "seen-lcft", "progress": False},
        data={"name": "synthetic", "options": {"n_users": 8, "samples_per_user": 10}},
        local={"trainable": "seen"},
        method={"name": "lcft"},
    )
    with pytest.raises(ConfigError, match=r"local\.trainable = 'seen' needs the cloud's"):
        run(cfg, tmp_path / "r", progress=False, log=lambda _: None)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()
