"""CKKS on RelayRec's selector and CoDA's matching: the server sees ciphertexts only,
decisions equal the plaintext ones, bad input is refused (API and CLI); CoDA's samples
travel privatized; RelayRec devices download all K models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from protocols.errors import ConfigError, MessageError
from protocols.he import MATCHING_PARAMETERS, EnvelopeKind, SecretContext
from protocols.he.envelope import pack, unpack
from secrelay.cli import app
from secrelay.config import RunConfig, load_config
from secrelay.data import Field, Schema
from secrelay.experiment import check_config, run
from secrelay.federated.executor import SequentialExecutor
from secrelay.federated.messages import SERVER, ModelDownload, QueryMessage, ReplyMessage
from secrelay.federated.transcript import Channel, Transcript
from secrelay.methods import RunContext, model_spec_from, prepare_data
from secrelay.privacy.plan import PrivacyPlan
from secrelay.relay.coda import CoDAMethod
from secrelay.relay.coda.he_matching import PICK_TOPIC, HEMatchServer, encrypted_match, top_k
from secrelay.relay.coda.privatize import SamplePrivatizer, pool_unit
from secrelay.relay.relayrec import SELECT_TOPIC, RelayRecMethod
from secrelay.relay.relayrec.he_selector import (
    HE_CONTEXT_TOPIC,
    square_selector_logits,
    train_square_selector,
)

runner = CliRunner()

# --- tiny configurations ------------------------------------------------------------------


def _relayrec(**privacy: object) -> RunConfig:
    return load_config(
        None,
        run={"name": "he-rr", "seed": 3, "progress": False},
        data={
            "name": "synthetic",
            "options": {"n_users": 30, "samples_per_user": 30, "n_items": 60},
        },
        split={"alpha": 0.25},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 1, "batch_size": 64},
        local={"epochs": 1, "batch_size": 16},
        federated={"rounds": 1, "clients_per_round": 8},
        method={
            "name": "relayrec",
            "options": {
                "server_model_options": {"cin_layer_sizes": [4], "hidden_units": [8]},
                "meta_epochs": 1,
                "selector_epochs": 50,
                "selector_hidden": 8,
            },
        },
        privacy=privacy,
    )


def _coda(options: dict | None = None, **privacy: object) -> RunConfig:
    return RunConfig.from_dict(
        {
            "run": {"name": "he-coda", "seed": 0, "progress": False, "record_transcript": True},
            "data": {"name": "synthetic", "options": {"n_users": 24, "samples_per_user": 30}},
            "split": {"alpha": 0.3},
            "model": {"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
            "cloud": {"epochs": 1, "batch_size": 64},
            "local": {"epochs": 1, "batch_size": 16, "lr": 0.01},
            "method": {
                "name": "coda",
                "options": {"k": 4, "sigma_sweep": [0.0], "max_devices": 8, **(options or {})},
            },
            "privacy": {"randomness": "reproducible", **privacy},
        }
    )


def _context(config: RunConfig, tmp_path: Path) -> RunContext:
    data = prepare_data(config)
    return RunContext(
        config=config,
        data=data,
        model_spec=model_spec_from(config, data.full.schema),
        channel=Channel(Transcript()),
        executor=SequentialExecutor(),
        run_dir=tmp_path,
        privacy=PrivacyPlan.from_config(config),
        log=lambda s: None,
    )


def _payload_bytes(m: object) -> list[bytes]:
    out = []
    for v in vars(m).values():
        if isinstance(v, bytes):
            out.append(v)
        elif isinstance(v, dict):
            out += [np.asarray(a).tobytes() for a in v.values() if isinstance(a, np.ndarray)]
    return out


# --- RelayRec: the encrypted selector -------------------------------------------------------


def test_square_selector_learns_separable_preferences() -> None:
    rng = np.random.default_rng(1)
    centers = rng.normal(0, 1, (3, 6))
    y = rng.integers(0, 3, 300)
    x = centers[y] + rng.normal(0, 0.2, (300, 6))
    w, acc = train_square_selector(x, y, 3, hidden=8, epochs=200, seed=0)
    assert acc >= 0.95
    again, _ = train_square_selector(x, y, 3, hidden=8, epochs=200, seed=0)
    np.testing.assert_array_equal(again.w1, w.w1)
    # The folded CKKS plan computes the same function up to a common shift.
    net = w.network(MATCHING_PARAMETERS.__class__(8192, (60, 40, 40, 60), 40))
    ref = square_selector_logits(w, x[:5])
    got = np.stack([net.reference(xi) for xi in x[:5]])
    np.testing.assert_allclose(np.diff(got, axis=1), np.diff(ref, axis=1), atol=1e-8)


def test_server_view_carries_no_plaintext_preference_vector(tmp_path: Path) -> None:
    ctx = _context(_relayrec(he_selector=True), tmp_path)
    method = RelayRecMethod(ctx)
    method.setup()
    view = ctx.channel.transcript.server_view()
    ups = [m for m in view if isinstance(m, QueryMessage)]
    assert {m.topic for m in ups} == {HE_CONTEXT_TOPIC, SELECT_TOPIC}
    assert all(not m.arrays and m.blob for m in ups)
    # p_u's bytes (float64 or float32) appear in no payload the server saw.
    from secrelay.relay.relayrec.selector import ItemSpace

    space = next(
        m for m in view if isinstance(m, ReplyMessage) and m.topic == "relayrec/item_space"
    )
    blobs = [b for m in view for b in _payload_bytes(m)]
    for dev, dd in ctx.data.devices.items():
        p_u = ItemSpace.from_arrays(dd.train.schema, space.arrays).preference(dd.train)
        for needle in (p_u.tobytes(), p_u.astype(np.float32).tobytes()):
            assert not any(needle in b for b in blobs), dev
        envs = [m.blob for m in ups if m.sender == dev]
        assert len(envs) == 2 and all(b.startswith(b"SRHE") for b in envs)
    stats = method.cloud_stats["he_selector"]
    assert stats["he/selector_plaintext_agreement"] == 1.0
    assert stats["he/selector_context_bytes_mean"] < 5e6
    rec = method.run_round(1)
    assert rec["he/selector_devices"] == len(ctx.data.devices)
    assert rec["he/selector_server_seconds_mean"] > 0
    method.close()


def test_every_relayrec_download_carries_all_k_models(tmp_path: Path) -> None:
    ctx = _context(_relayrec(), tmp_path)
    method = RelayRecMethod(ctx)
    method.setup()
    method.run_round(1)
    downloads = ctx.channel.transcript.messages(kind=ModelDownload, round=1)
    assert downloads
    for d in downloads:
        assert isinstance(d, ModelDownload)
        assert set(d.models) == set(method.keys)
    method.close()


# --- CoDA: encrypted matching ------------------------------------------------------------------


def test_encrypted_matching_equals_plaintext_knn_and_hides_the_vector(tmp_path: Path) -> None:
    res_plain = run(_coda(), tmp_path / "plain", progress=False, log=lambda s: None)
    cfg = _coda({"he_shuffle_pool": False}, he_matching=True)
    ctx = _context(cfg, tmp_path / "he")
    method = CoDAMethod(ctx)
    method.setup()
    rec = method.run_round(1)
    method.close()
    assert rec["he/matching_topk_exact"] == 1.0 and rec["he/matching_topk_ties"] == 1.0
    # Same matched users in the same order: the same samples, the same models.
    assert rec["gauc"] == res_plain.records[-1]["gauc"]
    view = ctx.channel.transcript.server_view()
    ups = [m for m in view if isinstance(m, QueryMessage)]
    assert ups and all("user_vector" not in m.arrays for m in ups)
    for m in ups:
        assert isinstance(m, QueryMessage)
        if m.topic == PICK_TOPIC:
            assert set(m.arrays) == {"positions"} and not m.blob
        else:
            assert not m.arrays and m.blob.startswith(b"SRHE")


def test_pool_order_is_shuffled_per_request() -> None:
    rng = np.random.default_rng(0)
    users, x = np.arange(100, 140), rng.random((40, 5))
    server = HEMatchServer(users, x, MATCHING_PARAMETERS, generator=np.random.default_rng(1))
    v = x[7] + 0.01
    ch = Channel(Transcript())
    first = encrypted_match(3, 1, v, k=3, channel=ch, server=server)
    again = encrypted_match(3, 1, v, k=3, channel=ch, server=server)
    np.testing.assert_array_equal(first, again)
    assert first[0] == 107
    picks = [m.arrays["positions"] for m in ch.transcript if m.topic == PICK_TOPIC]
    assert not np.array_equal(picks[0], picks[1])  # positions differ: fresh random order
    assert server.stats.devices == 2 and server.stats.reply_bytes > 0


def test_malformed_picks_and_requests_are_refused() -> None:
    server = HEMatchServer(np.arange(5), np.eye(5, 3) + 0.1, MATCHING_PARAMETERS)
    pick = QueryMessage(
        sender=1, receiver=SERVER, round=1, topic=PICK_TOPIC, arrays={"positions": np.array([0])}
    )
    with pytest.raises(MessageError, match="scored request"):
        server.resolve(pick, k=1)
    dev = SecretContext(MATCHING_PARAMETERS, galois_steps=(1,))
    ctx = QueryMessage(
        sender=1, receiver=SERVER, round=1, topic="coda/he_context", blob=dev.serialize()
    )
    plain = QueryMessage(
        sender=1, receiver=SERVER, round=1, topic="coda/match", arrays={"user_vector": np.ones(3)}
    )
    with pytest.raises(MessageError, match="ciphertext only"):
        server.score(ctx, plain)
    secret = QueryMessage(
        sender=1,
        receiver=SERVER,
        round=1,
        topic="coda/he_context",
        blob=dev.serialize(save_secret_key=True),
    )
    query = QueryMessage(
        sender=1, receiver=SERVER, round=1, topic="coda/match", blob=dev.encrypt(np.ones(4096))
    )
    with pytest.raises(MessageError, match="secret key"):
        server.score(secret, query)
    server.score(ctx, query)
    for bad in (np.array([0, 0]), np.array([0, 9]), np.array([0.0, 1.0])):
        p = QueryMessage(
            sender=1, receiver=SERVER, round=1, topic=PICK_TOPIC, arrays={"positions": bad}
        )
        with pytest.raises(MessageError, match="distinct positions"):
            server.resolve(p, k=2)
    assert top_k(np.array([0.1, 0.5, 0.5, -1.0]), 2).tolist() == [1, 2]


# --- refusals before any data is loaded (API) and through the CLI ------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: _coda(he_selector=True), "privacy.he_selector encrypts the selector flow"),
        (lambda: _relayrec(he_matching=True), "privacy.he_matching encrypts the matching flow"),
        (
            lambda: _relayrec(he_selector=True).replace(
                method={"options": {"selector_path": "local"}}
            ),
            "selector_path = 'query'",
        ),
        (
            lambda: _coda({"he_coeff_mod_bit_sizes": [60, 60, 60, 60]}, he_matching=True),
            "N = 8192 allows at most 218 bits",
        ),
    ],
)
def test_unsupported_or_insecure_he_configs_are_refused(config, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_config(config())


def test_insecure_parameters_are_refused_through_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        """
[run]
name = "weak"
progress = false
[data]
name = "synthetic"
[method]
name = "relayrec"
[method.options]
he_coeff_mod_bit_sizes = [60, 40, 40, 40, 60]
[privacy]
he_selector = true
"""
    )
    res = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "218 bits" in _flat(res.output)


def _flat(text: str) -> str:
    """CLI output with the terminal's line wrapping undone (paths vary in length)."""
    return " ".join(text.split())


def test_he_check_cli(tmp_path: Path) -> None:
    dev = SecretContext(MATCHING_PARAMETERS, galois_steps=(1,))
    pub, secret = tmp_path / "ctx.bin", tmp_path / "secret.bin"
    pub.write_bytes(dev.serialize())
    secret.write_bytes(dev.serialize(save_secret_key=True))
    cts = tmp_path / "cts.bin"
    cts.write_bytes(dev.encrypt([1.0, 2.0]))
    ok = runner.invoke(app, ["he-check", str(pub)])
    assert ok.exit_code == 0 and "Galois steps [1]" in _flat(ok.output), ok.output
    ok = runner.invoke(app, ["he-check", str(cts), "--context", str(pub)])
    assert ok.exit_code == 0 and "1 fresh ciphertext" in _flat(ok.output), ok.output
    bad = runner.invoke(app, ["he-check", str(secret)])
    assert bad.exit_code == 3 and "secret key" in _flat(bad.output)
    raw = bytearray(cts.read_bytes())
    raw[-100] ^= 0x10
    corrupted = tmp_path / "bad.bin"
    corrupted.write_bytes(bytes(raw))
    bad = runner.invoke(app, ["he-check", str(corrupted), "--context", str(pub)])
    assert bad.exit_code == 3 and "corrupted" in _flat(bad.output)
    weak = list(unpack(pub.read_bytes(), expected=EnvelopeKind.PUBLIC_CONTEXT))
    weak[0] = (4096).to_bytes(4, "big") + weak[0][4:]  # 160 bits at N = 4096
    (tmp_path / "weak.bin").write_bytes(pack(EnvelopeKind.PUBLIC_CONTEXT, weak))
    bad = runner.invoke(app, ["he-check", str(tmp_path / "weak.bin")])
    assert bad.exit_code == 3 and "109 bits" in _flat(bad.output)


# --- CoDA: privatized samples --------------------------------------------------------------------


def _planted_schema() -> Schema:
    return Schema(
        (
            Field("user_id", "user", 50),
            Field("age", "user", 8),
            Field("occupation", "user", 20),
            Field("item_id", "item", 30),
        ),
        user_id_field="user_id",
    )


def _reidentification_rate(released: np.ndarray, truth: np.ndarray, pool: np.ndarray) -> float:
    """A curious device guesses the pool user of each received sample: a uniform pick
    among the pool users whose (age, occupation) equals the sample's; returns the
    expected share of correct guesses."""
    hits = 0.0
    for row, true_user in zip(released, truth):
        cands = np.flatnonzero((pool == row[1:3]).all(axis=1))
        hits += (1.0 / cands.size) if true_user in cands else 0.0
    return hits / len(truth)


def test_privatized_samples_resist_a_planted_reidentification() -> None:
    """Pool user 0 has a unique (age, occupation); without privatization every one of
    their released samples points at them, with ε = 1 per sample most do not."""
    schema = _planted_schema()
    rng = np.random.default_rng(0)
    pool = np.column_stack([rng.integers(1, 4, 40), rng.integers(1, 5, 40)])
    pool[0] = (7, 19)  # the planted user: nobody else is 7 / 19
    n = 200
    x = np.column_stack([np.zeros(n, int), np.tile(pool[0], (n, 1)), rng.integers(1, 30, n)])
    truth = np.zeros(n, int)
    assert _reidentification_rate(x, truth, pool) == 1.0
    priv = SamplePrivatizer(schema, epsilon=1.0)
    released = priv.randomize(x, np.random.default_rng(1))
    assert (released[:, 0] == 0).all() and (released[:, 3] == x[:, 3]).all()
    assert _reidentification_rate(released, truth, pool) < 0.2
    # Keep rate of each column matches k-ary randomized response at ε/2.
    keep = (released[:, 1:3] == x[:, 1:3]).mean(axis=0)
    for (_, k), rate in zip(priv.columns, keep):
        p = k / (np.expm1(0.5) + k)
        assert abs(rate - (1 - p + p / k)) < 0.12
    recs = priv.records({0: 5, 3: 0}, run_id="r", round=1)
    assert len(recs) == 1 and recs[0].devices == (pool_unit(0),) and recs[0].steps == 5
    assert recs[0].event.count == 5  # type: ignore[attr-defined]


def test_privatized_coda_run_sends_handles_and_records_pool_users(tmp_path: Path) -> None:
    cfg = _coda({"privatize_samples": True, "sample_epsilon": 2.0})
    res = run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    last = res.records[-1]
    assert last["privatized/samples_released"] > 0
    assert last["privatized/max_pool_user_epsilon"] >= 2.0
    # The pool users' records are in the run's ledger, as their own unit.
    lines = (tmp_path / "r" / "privacy_ledger.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert len(recs) == last["privatized/pool_users"]
    assert all(r["devices"][0].startswith("pool/") and r["unit"] == "pool_user" for r in recs)
    assert all(r["v"] == 3 for r in recs)
    assert sum(r["steps"] for r in recs) == last["privatized/samples_released"]
    assert not (tmp_path / "r" / "coda_pool_ledger.jsonl").exists()


def test_privatize_options_are_validated() -> None:
    from secrelay.relay.coda import CoDAOptions

    with pytest.raises(ConfigError, match=r"method\.options\.sample_epsilon"):
        CoDAOptions.from_mapping({"sample_epsilon": 0})
