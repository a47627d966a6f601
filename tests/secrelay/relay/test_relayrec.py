"""RelayRec: MAML against a hand computation, the selector, cluster-keyed
aggregation, the p_u query flow, end-to-end runs and resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protocols.errors import ConfigError
from secrelay.checkpoint import load_checkpoint
from secrelay.config import RunConfig, load_config
from secrelay.data import Field, Schema
from secrelay.experiment import resume, run
from secrelay.federated.executor import SequentialExecutor
from secrelay.federated.messages import ContributionUpload, QueryMessage, ReplyMessage
from secrelay.federated.transcript import Channel, Transcript
from secrelay.methods import RunContext, model_spec_from, prepare_data
from secrelay.models.base import make_model
from secrelay.privacy.plan import PrivacyPlan
from secrelay.relay.relayrec import (
    ITEM_SPACE_TOPIC,
    SELECT_TOPIC,
    ItemSpace,
    MAMLConfig,
    MetaTask,
    RelayRecMethod,
    RelayRecOptions,
    SharedUpdateStrategy,
    cluster_users,
    maml_step,
    preference_vector,
    selector_logits,
    train_selector,
)

# --- MAML against a hand computation -------------------------------------------------------


def _lr_setup() -> tuple[torch.nn.Module, Schema]:
    schema = Schema(
        (Field("user_id", "user", 3), Field("item_id", "item", 4)), user_id_field="user_id"
    )
    model = make_model("lr", schema, seed=0)
    rng = np.random.default_rng(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.normal(0, 0.5, p.shape).astype(np.float32)))
    return model, schema


def _phi(x: np.ndarray) -> np.ndarray:
    """LR as θ·φ(x): one-hot of each field's value in the shared table (offsets 0
    and 3) plus a constant 1 for the bias, in model.parameters() order."""
    out = np.zeros((x.shape[0], 8))
    out[np.arange(len(x)), x[:, 0]] = 1.0
    out[np.arange(len(x)), 3 + x[:, 1]] = 1.0
    out[:, 7] = 1.0
    return out


def _sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _grad(theta: np.ndarray, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    return phi.T @ (_sig(phi @ theta) - y) / len(y)


def _hess(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    s = _sig(phi @ theta)
    return phi.T @ np.diag(s * (1 - s)) @ phi / phi.shape[0]


def _task(xs, ys, xq, yq) -> MetaTask:
    return MetaTask(
        0,
        torch.tensor(xs),
        torch.tensor(ys, dtype=torch.float32),
        torch.tensor(xq),
        torch.tensor(yq, dtype=torch.float32),
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_maml_step_matches_hand_computation(first_order: bool) -> None:
    model, _ = _lr_setup()
    theta = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    raw = [
        (
            np.array([[1, 2], [2, 3], [1, 1]]),
            np.array([1.0, 0, 1]),
            np.array([[1, 3], [2, 2]]),
            np.array([0.0, 1]),
        ),
        (
            np.array([[0, 1], [2, 1]]),
            np.array([0.0, 1]),
            np.array([[0, 2], [2, 1], [1, 0]]),
            np.array([1.0, 1, 0]),
        ),
    ]
    eta1, eta2 = 0.3, 0.2
    meta_grads = []
    for xs, ys, xq, yq in raw:
        ps, pq = _phi(xs), _phi(xq)
        adapted = theta - eta1 * _grad(theta, ps, ys)
        gq = _grad(adapted, pq, yq)
        meta_grads.append(gq if first_order else (np.eye(8) - eta1 * _hess(theta, ps)) @ gq)
    expected = theta - eta2 * np.mean(meta_grads, axis=0)
    cfg = MAMLConfig(inner_lr=eta1, outer_lr=eta2, first_order=first_order, outer_optimizer="sgd")
    opt = torch.optim.SGD(model.parameters(), lr=eta2)
    maml_step(model, [_task(*r) for r in raw], cfg, opt)
    got = np.concatenate([p.detach().double().numpy().ravel() for p in model.parameters()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The two variants differ: the second-order term is not negligible here.
    if not first_order:
        fo = theta - eta2 * np.mean(
            [_grad(theta - eta1 * _grad(theta, _phi(a), b), _phi(c), d) for a, b, c, d in raw],
            axis=0,
        )
        assert np.abs(fo - expected).max() > 1e-4


def test_maml_config_validates() -> None:
    with pytest.raises(ValueError, match="inner_lr"):
        MAMLConfig(inner_lr=0.0)
    with pytest.raises(ValueError, match="outer_optimizer"):
        MAMLConfig(outer_optimizer="rmsprop")  # type: ignore[arg-type]


# --- clustering and the selector -----------------------------------------------------------


def test_cluster_users_separates_blobs_and_k1() -> None:
    rng = np.random.default_rng(0)
    reps = np.vstack([rng.normal(0, 0.1, (20, 3)), rng.normal(3, 0.1, (20, 3))])
    labels = cluster_users(reps, 2, seed=0)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1
    assert labels[0] != labels[-1]
    assert (cluster_users(reps, 1, seed=0) == 0).all()
    with pytest.raises(ValueError, match="distinct"):
        cluster_users(np.zeros((5, 2)), 2, seed=0)


def test_preference_vector_counts_nearest_centroids() -> None:
    c = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0]])
    items = np.array([[1.0, 1.0], [9.0, 9.0], [8.0, 9.0], [0.5, 9.0]])
    # λ = (1, 2, 1), I_u = 4
    np.testing.assert_allclose(preference_vector(items, c), (c[0] + 2 * c[1] + c[2]) / 4)
    np.testing.assert_array_equal(preference_vector(np.zeros((0, 2)), c), [0.0, 0.0])


def test_selector_learns_separable_preferences() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 1, (3, 6))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return centers[y] + rng.normal(0, 0.2, (n, 6)), y

    x, y = draw(300)
    weights, train_acc = train_selector(x, y, 3, epochs=200, seed=0)
    xt, yt = draw(300)
    test_acc = float((selector_logits(weights, xt).argmax(axis=1) == yt).mean())
    assert train_acc >= 0.95 and test_acc >= 0.95
    # Deterministic by seed.
    again, _ = train_selector(x, y, 3, epochs=200, seed=0)
    np.testing.assert_array_equal(again.w1, weights.w1)


# --- end-to-end on tiny synthetic data ----------------------------------------------------


def _config(**options: object) -> RunConfig:
    opts = {
        "server_model_options": {"cin_layer_sizes": [4], "hidden_units": [8]},
        "meta_epochs": 1,
        "selector_epochs": 50,
        **options,
    }
    return load_config(
        None,
        run={"name": "tiny", "seed": 3, "progress": False},
        data={
            "name": "synthetic",
            "options": {"n_users": 40, "samples_per_user": 30, "n_items": 60},
        },
        split={"alpha": 0.25},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1, "batch_size": 64},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": 3, "clients_per_round": 8},
        method={"name": "relayrec", "options": opts},
    )


def _method(config: RunConfig, tmp_path: Path) -> tuple[RelayRecMethod, Channel, RunContext]:
    data = prepare_data(config)
    channel = Channel(Transcript())
    ctx = RunContext(
        config=config,
        data=data,
        model_spec=model_spec_from(config, data.full.schema),
        channel=channel,
        executor=SequentialExecutor(),
        run_dir=tmp_path,
        privacy=PrivacyPlan.from_config(config),
        log=lambda s: None,
    )
    method = RelayRecMethod(ctx)
    method.setup()
    return method, channel, ctx


def test_preference_vector_goes_through_a_query_message(tmp_path: Path) -> None:
    method, channel, ctx = _method(_config(), tmp_path)
    queries = [m for m in channel.transcript.messages(kind=QueryMessage) if m.topic == SELECT_TOPIC]
    replies = {
        m.receiver: m
        for m in channel.transcript.messages(kind=ReplyMessage)
        if m.topic == SELECT_TOPIC
    }
    spaces = {
        m.receiver: m
        for m in channel.transcript.messages(kind=ReplyMessage)
        if m.topic == ITEM_SPACE_TOPIC
    }
    devices = ctx.data.devices
    assert sorted(q.sender for q in queries) == sorted(devices)
    keys = method.device_keys()
    for q in queries:
        assert isinstance(q, QueryMessage)
        dev = q.sender
        space = ItemSpace.from_arrays(devices[dev].train.schema, spaces[dev].arrays)
        np.testing.assert_allclose(q.arrays["p_u"], space.preference(devices[dev].train))
        assert keys[dev] == method.keys[int(np.argmax(replies[dev].arrays["scores"]))]
    # Only item-field rows of the server's embedding table are published.
    schema = ctx.data.full.schema
    table = next(iter(spaces.values())).arrays["item_table"]
    offsets = schema.vocab_offsets()
    for i, f in enumerate(schema.fields):
        block = table[offsets[i] : offsets[i] + f.vocab_size]
        assert (np.abs(block).sum() > 0) == (f.role == "item")
    method.close()


def test_local_selector_path_sends_no_query(tmp_path: Path) -> None:
    method, channel, _ = _method(_config(selector_path="local"), tmp_path)
    assert not channel.transcript.messages(kind=QueryMessage)
    assert all(s["selection"] == "selector" for s in method.loop.store.state.values())
    method.close()


def test_cluster_keyed_aggregation_never_mixes_clusters(tmp_path: Path) -> None:
    method, channel, _ = _method(
        _config(selection="random", collaboration="clustered_fedavg"), tmp_path
    )
    before = {k: v.copy() for k, v in method.strategy.models.items()}
    keys = method.device_keys()
    assert len(set(keys.values())) == 2, "random selection should use both models here"
    method.run_round(1)
    uploads = channel.transcript.messages(kind=ContributionUpload, round=1)
    assert uploads
    for i, key in enumerate(method.keys):
        mine = [u for u in uploads if keys[u.sender] == key]
        others = [u for u in uploads if keys[u.sender] != key]
        # Devices of other clusters put exact zeros in this slot.
        for u in others:
            assert isinstance(u, ContributionUpload)
            assert not u.contribution["delta"][i].any() and u.contribution["weight"][i] == 0
        if not mine:
            np.testing.assert_array_equal(method.strategy.models[key], before[key])
            continue
        num = sum(u.contribution["delta"][i] for u in mine)  # type: ignore[attr-defined]
        den = sum(u.contribution["weight"][i] for u in mine)  # type: ignore[attr-defined]
        np.testing.assert_allclose(
            method.strategy.models[key], before[key] + num / den, rtol=1e-5, atol=1e-6
        )
    method.close()


def test_shared_update_applies_the_global_mean_to_every_model() -> None:
    s = SharedUpdateStrategy()
    s.initialize({"cluster/0": np.zeros(2), "cluster/1": np.ones(2)})
    s.apply(1, {"delta": np.array([2.0, 4.0]), "weight": np.array([2.0])})
    np.testing.assert_allclose(s.models["cluster/0"], [1.0, 2.0])
    np.testing.assert_allclose(s.models["cluster/1"], [2.0, 3.0])


@pytest.mark.parametrize(
    ("initial", "selection", "collaboration"),
    [
        ("single_normal", "random", "fedavg"),
        ("multiple_normal", "optimal", "clustered_fedavg"),
        ("single_meta", "selector", "standalone"),
        ("multiple_meta", "selector", "fedprox"),
    ],
)
def test_ablations_run_end_to_end(
    tmp_path: Path, initial: str, selection: str, collaboration: str
) -> None:
    cfg = _config(initial=initial, selection=selection, collaboration=collaboration)
    cfg = cfg.replace(federated={"rounds": 1})
    result = run(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    final = result.final["final"]
    assert result.final["complete"]
    assert 0.0 < final["auc"] < 1.0 and np.isfinite(final["logloss"])
    cloud = json.loads((tmp_path / "run" / "relayrec_cloud.json").read_text())
    assert (
        sum(cloud["device_choices"].values()) == final["gauc_users"] + final["gauc_users_skipped"]
    )
    if initial.startswith("single"):
        # One model replicated into both slots before any round.
        assert cloud["initial_models"].keys() == {"model/0"}


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # reproducible randomness: the default draws every round's sample from the OS
    cfg = _config().replace(privacy={"randomness": "reproducible"})
    full = run(cfg, tmp_path / "full", progress=False, log=lambda s: None)
    run(cfg, tmp_path / "cut", progress=False, log=lambda s: None, stop_after=1)
    resumed = resume(tmp_path / "cut", progress=False, log=lambda s: None)
    assert len(resumed.records) == len(full.records) == 4
    for a, b in zip(full.records, resumed.records):
        assert a == b
    ck_full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    ck_cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for key, vec in ck_full["method"]["loop"]["strategy"]["models"].items():
        np.testing.assert_array_equal(vec, ck_cut["method"]["loop"]["strategy"]["models"][key])


def test_options_are_validated_with_their_key() -> None:
    with pytest.raises(ConfigError, match=r"method\.options\.num_clusters"):
        RelayRecOptions.from_mapping({"num_clusters": 0})
    with pytest.raises(ConfigError, match=r"method\.options\.initial"):
        RelayRecOptions.from_mapping({"initial": "fancy"})
    with pytest.raises(ConfigError, match=r"method\.options\.bogus"):
        RelayRecOptions.from_mapping({"bogus": 1})
    with pytest.raises(ConfigError, match=r"method\.options\.mu must be > 0"):
        RelayRecOptions.from_mapping({"mu": 0.0})
    # All problems are reported at once.
    with pytest.raises(ConfigError, match=r"inner_lr.*first_order|first_order.*inner_lr"):
        RelayRecOptions.from_mapping({"inner_lr": "x", "first_order": 3})
    assert RelayRecOptions.from_mapping({}).collaboration == "clustered_fedprox"


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize(
    "name",
    [
        "relayrec_ml100k",
        "relayrec_synthetic",
        "relayrec_quick",
        "lcft_ml100k",
        "lcft_synthetic",
        "lcft_quick",
    ],
)
def test_example_configs_are_valid(name: str) -> None:
    from secrelay.relay.lcft import LCFTOptions

    cfg = load_config(EXAMPLES / f"{name}.toml")
    if cfg.method.name == "relayrec":
        RelayRecOptions.from_mapping(cfg.method.options)
    else:
        LCFTOptions.from_mapping(cfg.method.options)


def test_quick_example_runs(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLES / "relayrec_quick.toml", run={"progress": False})
    result = run(cfg, tmp_path / "quick", progress=False, log=lambda s: None)
    assert result.final["complete"] and result.final["rounds_completed"] == 3
