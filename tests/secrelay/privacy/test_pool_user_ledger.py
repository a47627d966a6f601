"""The per-pool-user ledger unit (issue 14): CoDA's privatized samples spend ε per
pool user, composed per pool user — checked against dp_accounting — never summed
across pool users and never into the device users' ε; the records live in the run's
ledger (format 3), and old run directories with the side file still audit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dp_accounting
import pytest

from protocols.dp import GaussianEvent, LedgerRecord, PrivacyLedger, SelfComposedEvent
from protocols.errors import DataFormatError, InvalidParameterError
from secrelay.audit import audit
from secrelay.config import PrivacyConfig, RunConfig
from secrelay.experiment import run
from secrelay.privacy.session import PrivacySession
from secrelay.relay.coda.privatize import SamplePrivatizer

DELTA = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _pool(user: str, z: float, *, round: int = 1, count: int = 1) -> LedgerRecord:
    event = GaussianEvent(noise_multiplier=z)
    return LedgerRecord(
        run_id="r",
        round=round,
        mechanism="gaussian",
        event=event if count == 1 else SelfComposedEvent(event=event, count=count),
        unit="pool_user",
        devices=(user,),
        delta=DELTA,
        adjacency="replace_one",
    )


def _user(z: float) -> LedgerRecord:
    return LedgerRecord(
        run_id="r",
        round=1,
        mechanism="dp_fedavg[central_gaussian]",
        event=GaussianEvent(noise_multiplier=z),
        unit="user",
        devices=("0", "1"),
        delta=DELTA,
        adjacency="add_remove",
    )


def _rdp_reference(z: float, count: int) -> float:
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.GaussianDpEvent(z), count)
    return float(acc.get_epsilon(DELTA))


def test_pool_users_compose_per_subject_as_an_independent_accountant(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    ledger.spend([_pool("pool/1", 4.0, count=3), _pool("pool/2", 4.0), _pool("pool/1", 4.0)])
    by = ledger.epsilon_by_subject(delta=DELTA, unit="pool_user", accountant="rdp")
    # dp_accounting's RDP accountant on each pool user's own releases (GaussianEvent(z)
    # is a Gaussian of noise multiplier z at sensitivity 1 for both).
    ref1, ref2 = _rdp_reference(4.0, 4), _rdp_reference(4.0, 1)
    assert by == {"pool/1": pytest.approx(ref1, rel=0.02), "pool/2": pytest.approx(ref2, rel=0.02)}
    assert ledger.epsilon(delta=DELTA, unit="pool_user", accountant="rdp") == max(by.values())
    # The line format: pool-user lines are format 3, reloaded as they were.
    lines = [json.loads(s) for s in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert {line["v"] for line in lines} == {3}
    again = PrivacyLedger.load(tmp_path / "l.jsonl")
    assert again.records == ledger.records


def test_two_pool_users_are_never_summed(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    ledger.spend([_pool("pool/1", 1.0), _pool("pool/2", 1.0)])
    one = ledger.epsilon(delta=DELTA, device="pool/1", unit="pool_user")
    both_composed = ledger.epsilon(delta=DELTA, unit="user")  # no user records: 0
    summed = PrivacyLedger()
    summed.spend([_pool("pool/1", 1.0), _pool("pool/1", 1.0)])
    twice = summed.epsilon(delta=DELTA, device="pool/1", unit="pool_user")
    assert twice > one * 1.2  # composing the two releases would cost more
    assert ledger.epsilon(delta=DELTA, unit="pool_user") == pytest.approx(one)
    assert both_composed == 0.0
    with pytest.raises(InvalidParameterError, match="never composed across pool users"):
        ledger.epsilon_series(delta=DELTA, unit="pool_user")
    # The session: the device users' ε is unaffected, and budgets ignore pool users.
    session = PrivacySession(
        tmp_path,
        PrivacyConfig(
            user_level_dp=True, clipping_norm=1.0, noise_multiplier=1.0, user_epsilon=1.0
        ),
    )
    session.spend([_user(2.0)])
    before = session.user_epsilon()
    session.spend([_pool("pool/1", 0.5), _pool("pool/2", 0.5), _pool("pool/3", 0.5)])
    assert session.user_epsilon() == before
    largest, n = session.pool_user_epsilon() or (0.0, 0)
    single = PrivacyLedger()
    single.spend([_pool("pool/1", 0.5)])
    assert n == 3 and largest == pytest.approx(single.epsilon(delta=DELTA, unit="pool_user"))
    session.check([_pool("pool/1", 0.1)])  # far above the user budget, yet not refused
    spent = session.spent()
    assert spent["pool_users"] == 3 and spent["pool_user_epsilon_max"] == pytest.approx(largest)


def test_randomized_response_samples_match_dp_accounting(tmp_path: Path) -> None:
    """A pool user with n privatized samples spends n·ε by basic composition: at least
    what dp_accounting's PLD accountant gives for the same randomized responses."""
    from secrelay.data import Field, Schema

    schema = Schema(
        (Field("user_id", "user", 9), Field("age", "user", 4), Field("job", "user", 6)),
        user_id_field="user_id",
    )
    priv = SamplePrivatizer(schema, epsilon=0.5)
    recs = priv.records({7: 6, 8: 2}, run_id="r", round=1)
    ledger = PrivacyLedger()
    ledger.spend(recs)
    by = ledger.epsilon_by_subject(delta=DELTA, unit="pool_user")
    assert by == {"pool/7": pytest.approx(3.0), "pool/8": pytest.approx(1.0)}
    pld = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    for _ in range(6):  # one at a time: PLD's compose(event, count) ignored count here
        for _, k in priv.columns:
            p = k / (math.expm1(priv.column_epsilon) + k)
            pld.compose(dp_accounting.RandomizedResponseDpEvent(noise_parameter=p, num_buckets=k))
    reference = pld.get_epsilon(DELTA)
    assert 0.6 * by["pool/7"] < reference <= by["pool/7"] + 1e-9


def test_old_ledger_lines_cannot_claim_the_new_unit(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    PrivacyLedger(path).spend([_pool("pool/1", 1.0), _user(1.0)])
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert [line["v"] for line in lines] == [3, 2]  # a user line stays format 2
    lines[0]["v"] = 2
    path.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    with pytest.raises(DataFormatError, match="needs ledger format 3"):
        PrivacyLedger.load(path)


def _coda(
    privacy: dict[str, object] | None = None, transcript: bool = True, **options: object
) -> RunConfig:
    return RunConfig.from_dict(
        {
            "run": {"name": "pool", "seed": 0, "progress": False, "record_transcript": transcript},
            "data": {"name": "synthetic", "options": {"n_users": 24, "samples_per_user": 30}},
            "split": {"alpha": 0.3},
            "model": {"name": "dnn", "embedding_dim": 4, "options": {"hidden_units": [8]}},
            "cloud": {"epochs": 1, "batch_size": 64},
            "local": {"epochs": 1, "batch_size": 16, "lr": 0.01},
            "method": {
                "name": "coda",
                "options": {
                    "k": 4,
                    "sigma_sweep": [0.0],
                    "max_devices": 6,
                    "privatize_samples": True,
                    "sample_epsilon": 1.5,
                    **options,
                },
            },
            "privacy": {"randomness": "reproducible", **(privacy or {})},
        }
    )


def test_coda_pool_records_are_in_the_run_ledger_and_the_audit(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    res = run(_coda(), rd, progress=False, log=lambda s: None)
    last = res.records[-1]
    ledger = PrivacyLedger.load(rd / "privacy_ledger.jsonl")
    assert {r.unit for r in ledger.records} == {"pool_user"}
    assert len(ledger) == last["privatized/pool_users"]
    report = audit(rd, write=False)
    assert report.pool_user.subjects == last["privatized/pool_users"]
    assert report.pool_user.epsilon() == pytest.approx(last["privatized/max_pool_user_epsilon"])
    assert report.user.epsilon() is None  # no device-level DP in this run
    batch = next(f for f in report.flows if f.name == "CoDA batch fetch")
    assert batch.status == "protected" and "ε per pool user" in batch.protection
    # An old run directory: the records in the side file, unit "user", no ledger.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        (old / name).write_bytes((rd / name).read_bytes())
    side = [{**r.to_dict(), "unit": "user"} for r in ledger.records]
    (old / "coda_pool_ledger.jsonl").write_text(
        "".join(json.dumps(x, sort_keys=True) + "\n" for x in side)
    )
    old_report = audit(old, write=False)
    assert old_report.pool_user.epsilon() == pytest.approx(report.pool_user.epsilon())
    assert any("coda_pool_ledger.jsonl" in n for n in old_report.notes)


def test_coda_under_dp_sgd_spends_pool_records_once(tmp_path: Path) -> None:
    rd = tmp_path / "r"
    cfg = _coda(
        {"dp_sgd": True, "local_noise_multiplier": 1.0}, transcript=False, gate=False, max_devices=2
    )
    res = run(cfg, rd, progress=False, log=lambda s: None)
    ledger = PrivacyLedger.load(rd / "privacy_ledger.jsonl")
    pool = [r for r in ledger.records if r.unit == "pool_user"]
    assert len(pool) == res.records[-1]["privatized/pool_users"]
    assert sum(r.steps or 0 for r in pool) == res.records[-1]["privatized/samples_released"]
    assert any(r.unit == "example" for r in ledger.records)
    assert res.epsilon is not None and res.epsilon["pool_users"] == len(pool)
    report = audit(rd, write=False)
    assert report.pool_user.epsilon() == pytest.approx(res.epsilon["pool_user_epsilon_max"])
    assert "no saved transcript" in report.flow_evidence
