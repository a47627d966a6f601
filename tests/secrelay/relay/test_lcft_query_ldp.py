"""LCFT's query path for the hard correction and its local DP (privacy.query_ldp):
the mechanisms, their calibration and accounting, the messages, the ledger and
budget in a run, and the configuration refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.dp import (
    GaussianEvent,
    PrivacyLedger,
    RandomizedResponseEvent,
    SelfComposedEvent,
    make_accountant,
)
from protocols.errors import BudgetExceededError, ConfigError, MessageError
from secrelay.config import RunConfig, load_config
from secrelay.experiment import run
from secrelay.federated.messages import SERVER, QueryMessage
from secrelay.relay.lcft import (
    QUERY_TOPIC,
    CorrectionTable,
    CTRQuery,
    answer_query,
    query_request,
    rr_bits_for,
    rr_report_variance,
)

TABLE = CorrectionTable(
    np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    np.array([0.5, 0.75, 1.0, 1.25, 1.5]),
    np.array([-0.2, 0.0, 0.2, 0.0, -0.2]),
)
DELTA = 1e-5


def _config(*, options: dict[str, Any] | None = None, **privacy: Any) -> RunConfig:
    """The tiny synthetic LCFT run of tests/secrelay/relay/test_lcft.py (≈ 0.5 s)."""
    return load_config(
        None,
        run={"name": "lcft-q", "seed": 1, "progress": False, "record_transcript": True},
        data={
            "name": "synthetic",
            "options": {"n_users": 30, "samples_per_user": 40, "n_items": 50},
        },
        split={"alpha": 0.3},
        model={"name": "lr", "embedding_dim": 4},
        cloud={"epochs": 2, "batch_size": 64},
        local={"epochs": 1, "batch_size": 16},
        method={
            "name": "lcft",
            "options": {
                "corrections": ["hard", "soft1"],
                "hard_min_rows": 5,
                "hard_max_users": 4,
                "hard_alphas": [0.75, 1.0],
                "hard_betas": [0.0, 0.2],
                **(options or {}),
            },
        },
        privacy=privacy,
    )


def _run(cfg: RunConfig, path: Path) -> Any:
    return run(cfg, path, progress=False, log=lambda s: None)


def _pairs(run_dir: Path) -> dict[int, tuple[float, float]]:
    from secrelay.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "checkpoint.pt")
    store = state["method"]["loop"]["device_store"]
    return {int(d): tuple(s["pair/hard"]) for d, s in store.items()}


# --- the mechanisms -----------------------------------------------------------------


@given(w=st.floats(min_value=0.0, max_value=1.0))
def test_plain_query_answers_the_table_lookup(w: float) -> None:
    query = CTRQuery.plan("off", epsilon=None, delta=DELTA)
    q = query_request(3, 1, w, query, generator=np.random.default_rng(0))
    assert q.arrays["local_ctr"].tolist() == [w]
    r = answer_query(q, TABLE, query)
    assert (r.sender, r.receiver, r.round, r.topic) == (SERVER, 3, 1, QUERY_TOPIC)
    assert (float(r.arrays["alpha"][0]), float(r.arrays["beta"][0])) == TABLE.lookup(w)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("epsilon", [0.5, 1.0, 4.0])
def test_gaussian_report_is_calibrated_to_the_target(epsilon: float, accountant: str) -> None:
    query = CTRQuery.plan("gaussian", epsilon=epsilon, delta=DELTA, accountant=accountant)
    assert query.event == GaussianEvent(noise_multiplier=query.noise_multiplier)
    spent = make_accountant(accountant).compose(query.event).get_epsilon(delta=DELTA)
    assert 0.99 * epsilon <= spent <= epsilon


def test_gaussian_report_noise_has_the_calibrated_variance() -> None:
    query = CTRQuery.plan("gaussian", epsilon=1.0, delta=DELTA)
    z = query.noise_multiplier
    assert z is not None
    g = np.random.default_rng(2024)
    n, w = 4_000, 0.3
    noise = np.array([query.report(w, generator=g)["noisy_ctr"][0] - w for _ in range(n)])
    # Mean 0 and variance z² (sample variance: relative s.e. √(2/n) ≈ 2 %).
    assert abs(noise.mean()) < 4 * z / math.sqrt(n)
    assert noise.var() / z**2 == pytest.approx(1.0, abs=4 * math.sqrt(2 / n))


def test_server_clips_reports_into_the_unit_interval() -> None:
    query = CTRQuery.plan("gaussian", epsilon=1.0, delta=DELTA)
    for raw, looked_up in ((-3.7, 0.0), (5.2, 1.0), (0.45, 0.45)):
        assert query.estimate({"noisy_ctr": np.array([raw])}) == looked_up
        q = QueryMessage(
            sender=0, receiver=SERVER, round=1, topic=QUERY_TOPIC, arrays={"noisy_ctr": [raw]}
        )
        r = answer_query(q, TABLE, query)
        assert (r.arrays["alpha"][0], r.arrays["beta"][0]) == TABLE.lookup(looked_up)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize(("epsilon", "bits"), [(0.5, 0), (1.0, 0), (4.0, 0), (1.0, 3)])
def test_randomized_response_report_composes_to_the_target(
    epsilon: float, bits: int, accountant: str
) -> None:
    query = CTRQuery.plan("randomized_response", epsilon=epsilon, delta=DELTA, bits=bits)
    k = bits or rr_bits_for(epsilon)
    assert query.bits == k
    bit = RandomizedResponseEvent.from_epsilon(query.bit_epsilon or 0.0)
    assert query.event == (bit if k == 1 else SelfComposedEvent(event=bit, count=k))
    spent = make_accountant(accountant).compose(query.event).get_epsilon(delta=DELTA)
    assert 0.99 * epsilon <= spent <= epsilon  # pure ε: basic composition, exact
    report = query.report(0.7, generator=np.random.default_rng(0))
    assert report["bits"].shape == (k,) and set(report["bits"].tolist()) <= {0, 1}


def test_randomized_response_estimate_is_unbiased_with_the_documented_variance() -> None:
    query = CTRQuery.plan("randomized_response", epsilon=4.0, delta=DELTA)
    g = np.random.default_rng(7)
    n, w = 4_000, 0.3
    # The unclipped estimate: the mean of the per-bit estimates.
    from protocols.dp import randomized_response_estimate

    est = np.array(
        [
            randomized_response_estimate(
                query.report(w, generator=g)["bits"], epsilon=query.bit_epsilon or 0.0
            ).mean()
            for _ in range(n)
        ]
    )
    assert abs(est.mean() - w) < 4 * math.sqrt(rr_report_variance(4.0, query.bits) / n)
    assert est.var() <= rr_report_variance(4.0, query.bits) * (1 + 4 * math.sqrt(2 / n))


def test_rr_bit_count_minimises_the_variance() -> None:
    assert rr_bits_for(1.0) == 1  # a single bit is best at small ε
    for eps in (0.5, 2.0, 6.0, 12.0):
        k = rr_bits_for(eps)
        assert all(rr_report_variance(eps, k) <= rr_report_variance(eps, j) for j in range(1, 20))


def test_malformed_queries_are_rejected() -> None:
    gauss = CTRQuery.plan("gaussian", epsilon=1.0, delta=DELTA)
    rr = CTRQuery.plan("randomized_response", epsilon=1.0, delta=DELTA)
    plain = CTRQuery()

    def q(arrays: dict[str, Any], topic: str = QUERY_TOPIC) -> QueryMessage:
        return QueryMessage(sender=0, receiver=SERVER, round=1, topic=topic, arrays=arrays)

    with pytest.raises(MessageError, match="noisy_ctr"):
        answer_query(q({"local_ctr": [0.4]}), TABLE, gauss)  # a raw w_i where noise is due
    with pytest.raises(MessageError, match="finite"):
        answer_query(q({"noisy_ctr": [np.nan]}), TABLE, gauss)
    with pytest.raises(MessageError, match="0 or 1"):
        answer_query(q({"bits": [0.5]}), TABLE, rr)
    with pytest.raises(MessageError, match=r"\[0, 1\]"):
        answer_query(q({"local_ctr": [1.5]}), TABLE, plain)
    with pytest.raises(MessageError, match="topic"):
        answer_query(q({"local_ctr": [0.5]}, topic="other"), TABLE, plain)


# --- in a run -------------------------------------------------------------------------


def test_query_path_without_ldp_gives_the_table_pairs(tmp_path: Path) -> None:
    table = _run(_config(), tmp_path / "table")
    query = _run(_config(options={"correction_path": "query"}), tmp_path / "query")
    assert _pairs(tmp_path / "query") == _pairs(tmp_path / "table")
    assert query.final["final"]["hard/gauc"] == table.final["final"]["hard/gauc"]
    assert query.final["final"]["query/pair_match"] == 1.0
    # Table path: nothing goes up. Query path: one query and one reply per device,
    # and the table itself is never downloaded.
    t_counts, q_counts = table.final["traffic"]["count"], query.final["traffic"]["count"]
    n = len(_pairs(tmp_path / "table"))
    assert not any(k.startswith("up:") for k in t_counts)
    assert q_counts["up:query"] == n and q_counts["down:reply"] == 2 * n
    assert not (tmp_path / "query" / "privacy_ledger.jsonl").exists()  # no DP, no ledger


@pytest.mark.parametrize("mechanism", ["gaussian", "randomized_response"])
def test_ldp_run_records_every_device_and_hides_w_i(tmp_path: Path, mechanism: str) -> None:
    eps = 1.0
    cfg = _config(options={"correction_path": "query"}, query_ldp=mechanism, query_ldp_epsilon=eps)
    result = _run(cfg, tmp_path / "run")
    ledger = PrivacyLedger.load(tmp_path / "run" / "privacy_ledger.jsonl")
    devices = sorted(_pairs(tmp_path / "run"))
    assert len(ledger) == 1
    (record,) = ledger.records
    assert record.mechanism == f"lcft_query[{mechanism}]" and record.unit == "user"
    assert record.round == 1 and record.devices == tuple(str(d) for d in devices)
    event_type = GaussianEvent if mechanism == "gaussian" else RandomizedResponseEvent
    assert isinstance(record.event, event_type)
    assert record.delta == (DELTA if mechanism == "gaussian" else 0.0)
    # Each device's ε is the target, and so is the global one (one report per device).
    for device in (str(devices[0]), str(devices[-1]), None):
        spent = ledger.epsilon(delta=DELTA, device=device, unit="user", accountant="prv")
        assert 0.99 * eps <= spent <= eps
    # The transcript: one query per device, none carrying the raw local CTR.
    from secrelay.methods import prepare_data

    data = prepare_data(cfg)
    queries = [m for m in result_transcript(tmp_path / "run") if m["type"] == "QueryMessage"]
    assert sorted(m["sender"] for m in queries) == devices
    key = "noisy_ctr" if mechanism == "gaussian" else "bits"
    for m in queries:
        (value,) = [v for k, v in m["arrays"].items()]
        assert set(m["arrays"]) == {key}
        if mechanism == "gaussian":
            assert value[0] != data.devices[m["sender"]].train.ctr
    assert result.final["final"]["query/abs_error"] > 0


def result_transcript(run_dir: Path) -> list[dict[str, Any]]:
    """The saved transcript's messages, arrays inlined."""
    with np.load(run_dir / "transcript.npz") as z:
        headers = json.loads(str(z["__headers__"]))
        for h in headers:
            if isinstance(h.get("arrays"), dict) and "arrays" in h["arrays"]:
                h["arrays"] = {k: z[v].tolist() for k, v in h["arrays"]["arrays"].items()}
    return list(headers)


def _with_user_budget(cfg: RunConfig, epsilon: float) -> RunConfig:
    return cfg.replace(privacy={"user_epsilon": epsilon})


def test_user_budget_refuses_the_query_round_before_it_runs(tmp_path: Path) -> None:
    ldp = {"query_ldp": "gaussian", "query_ldp_epsilon": 1.0}
    cfg = _with_user_budget(_config(options={"correction_path": "query"}, **ldp), 0.8)
    with pytest.raises(BudgetExceededError, match=r"privacy\.user_epsilon"):
        _run(cfg, tmp_path / "over")
    assert not (tmp_path / "over" / "privacy_ledger.jsonl").exists()
    metrics = (tmp_path / "over" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in metrics] == [0]  # round 1 never ran
    # A budget equal to the target is met (calibration never overspends).
    cfg = _with_user_budget(_config(options={"correction_path": "query"}, **ldp), 1.0)
    assert _run(cfg, tmp_path / "ok").final["complete"]


# --- configuration refusals ------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "privacy", "match"),
    [
        (
            {},
            {"query_ldp": "gaussian", "query_ldp_epsilon": 1.0},
            r"privacy\.query_ldp.*method\.options\.correction_path = 'table'",
        ),
        (
            {"corrections": ["soft1"]},
            {"query_ldp": "randomized_response", "query_ldp_epsilon": 1.0},
            r"privacy\.query_ldp.*method\.options\.corrections.*no 'hard'",
        ),
        (
            {"corrections": ["soft1"], "correction_path": "query"},
            {},
            r"method\.options\.correction_path = 'query'.*no 'hard'",
        ),
        (
            {"correction_path": "query", "query_rr_bits": 2},
            {"query_ldp": "gaussian", "query_ldp_epsilon": 1.0},
            r"method\.options\.query_rr_bits",
        ),
        (
            {},
            {"dp_sgd": True, "local_noise_multiplier": 1.0},
            r"privacy\.dp_sgd cannot make LCFT's corrections \['hard', 'soft1'\]",
        ),
        (
            {"correction_path": "query"},
            {"user_level_dp": True, "noise_multiplier": 1.0, "clipping_norm": 1.0},
            r"'lcft' does not apply privacy\.user_level_dp",
        ),
    ],
)
def test_config_refusals(
    tmp_path: Path, options: dict[str, Any], privacy: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        _run(_config(options=options, **privacy), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before any training


# --- example-level DP-SGD on the fine-tuning -------------------------------------------------


def test_dp_sgd_fine_tuning_spends_one_record_per_device_and_correction(tmp_path: Path) -> None:
    ldp = {"query_ldp": "gaussian", "query_ldp_epsilon": 2.0}
    cfg = _config(
        options={"corrections": ["hard", "none"], "correction_path": "query"},
        dp_sgd=True,
        local_noise_multiplier=1.0,
        **ldp,
    )
    _run(cfg, tmp_path / "r")
    ledger = PrivacyLedger.load(tmp_path / "r" / "privacy_ledger.jsonl")
    example = [r for r in ledger.records if r.unit == "example"]
    user = [r for r in ledger.records if r.unit == "user"]
    assert len(user) == 1 and user[0].mechanism == "lcft_query[gaussian]"
    per_device: dict[str, int] = {}
    for r in example:
        assert r.mechanism == "dp_sgd[ghost]" and r.round == 1
        per_device[r.devices[0]] = per_device.get(r.devices[0], 0) + 1
    assert per_device and set(per_device.values()) == {2}  # 'hard' and 'none'


def test_dp_sgd_budget_refuses_lcft_before_it_fine_tunes(tmp_path: Path) -> None:
    cfg = _config(
        options={"corrections": ["none"]},
        dp_sgd=True,
        local_noise_multiplier=0.3,
        example_epsilon=0.5,
    )
    with pytest.raises(BudgetExceededError, match=r"privacy\.example_epsilon"):
        _run(cfg, tmp_path / "r")
    assert not (tmp_path / "r" / "privacy_ledger.jsonl").exists()
