"""Privacy ledger: round trip, crash safety, corrupt lines, budgets refused before append."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from pathlib import Path

import pytest

from protocols.dp.events import (
    GaussianEvent,
    PoissonSampledEvent,
    PureEpsilonEvent,
    SelfComposedEvent,
)
from protocols.dp.ledger import (
    LedgerConflictError,
    LedgerRecord,
    PrivacyBudget,
    PrivacyLedger,
)
from protocols.errors import BudgetExceededError, DataFormatError, InvalidParameterError

DELTA = 1e-5


def sgd_record(device: str, rnd: int, *, steps: int = 100, z: float = 1.0) -> LedgerRecord:
    return LedgerRecord(
        run_id="run",
        round=rnd,
        mechanism="dp_sgd",
        event=SelfComposedEvent(PoissonSampledEvent(0.05, GaussianEvent(z)), steps),
        unit="example",
        devices=(device,),
        delta=DELTA,
        adjacency="add_remove",
        noise_multiplier=z,
        sigma=z,
        sensitivity=1.0,
        sample_rate=0.05,
        steps=steps,
    )


def agg_record(devices: tuple[str, ...], rnd: int, *, z: float = 4.0) -> LedgerRecord:
    return LedgerRecord(
        run_id="run",
        round=rnd,
        mechanism="gaussian_sum",
        event=GaussianEvent(z),
        unit="user",
        devices=devices,
        delta=DELTA,
        adjacency="add_remove",
        noise_multiplier=z,
        sensitivity=1.0,
    )


def test_record_validation_names_field():
    with pytest.raises(InvalidParameterError, match="`devices` must not be empty"):
        agg_record((), 0)
    with pytest.raises(InvalidParameterError, match="duplicates"):
        agg_record(("a", "a"), 0)
    with pytest.raises(InvalidParameterError, match="`unit` must be one of"):
        LedgerRecord(
            run_id="r",
            round=0,
            mechanism="m",
            event=GaussianEvent(1.0),
            unit="device",  # type: ignore[arg-type]
            devices=("a",),
            delta=0.0,
            adjacency="add_remove",
        )
    with pytest.raises(InvalidParameterError, match="`round` must be an integer"):
        LedgerRecord(
            run_id="r",
            round=-1,
            mechanism="m",
            event=GaussianEvent(1.0),
            unit="user",
            devices=("a",),
            delta=0.0,
            adjacency="add_remove",
        )
    with pytest.raises(InvalidParameterError, match=r"`sample_rate` must be in \(0, 1\]"):
        LedgerRecord(
            run_id="r",
            round=0,
            mechanism="m",
            event=GaussianEvent(1.0),
            unit="user",
            devices=("a",),
            delta=0.0,
            adjacency="add_remove",
            sample_rate=2.0,
        )


def test_round_trip_and_restart(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger.open(path)
    ledger.spend([sgd_record("a", 0), sgd_record("b", 0)])
    ledger.spend([agg_record(("a", "b"), 0)])
    again = PrivacyLedger.load(path)
    assert again.records == ledger.records
    assert again.devices() == ("a", "b")
    # A restarted run continues appending after the existing records.
    resumed = PrivacyLedger.open(path)
    resumed.spend([sgd_record("a", 1)])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2, 3]
    assert len(PrivacyLedger.load(path)) == 4
    with pytest.raises(InvalidParameterError, match="already exists"):
        PrivacyLedger(path)


def test_per_device_and_global_epsilon():
    ledger = PrivacyLedger()
    ledger.spend([sgd_record("a", 0), sgd_record("a", 1), sgd_record("b", 0)])
    ledger.spend([agg_record(("a", "b"), 0), agg_record(("a",), 1)])
    eps_a = ledger.epsilon(delta=DELTA, device="a")
    eps_b = ledger.epsilon(delta=DELTA, device="b")
    assert eps_a > eps_b > 0
    # Device b's example-level ε equals one DP-SGD record's alone.
    single = PrivacyLedger()
    single.spend([sgd_record("b", 0)])
    assert eps_b == pytest.approx(single.epsilon(delta=DELTA, device="b"))
    # Global user-level ε composes every user-level record; per-device only its own.
    glob = ledger.epsilon(delta=DELTA, unit="user")
    assert glob == pytest.approx(ledger.epsilon(delta=DELTA, unit="user", device="a"))
    assert ledger.epsilon(delta=DELTA, unit="user", device="b") < glob
    assert ledger.epsilon(delta=DELTA, device="nobody") == 0.0


def test_epsilon_series_is_cumulative_and_monotone():
    ledger = PrivacyLedger()
    for rnd in range(4):
        ledger.spend([sgd_record("a", rnd), agg_record(("a",), rnd)])
    series = ledger.epsilon_series(delta=DELTA, device="a", accountant="rdp")
    assert [p.round for p in series] == [0, 1, 2, 3]
    eps = [p.epsilon for p in series]
    assert all(x < y for x, y in itertools.pairwise(eps))
    assert eps[-1] == pytest.approx(ledger.epsilon(delta=DELTA, device="a", accountant="rdp"))


def test_budget_refuses_before_append_and_leaves_file_unchanged(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    budget = PrivacyBudget(delta=DELTA, example_epsilon=5.0, user_epsilon=0.9)
    report = ledger.spend([sgd_record("a", 0)], budget=budget)
    assert report is not None and 0 < report.example_epsilon["a"] <= 5.0
    before_bytes, before_records = path.read_bytes(), ledger.records
    # A round that would overspend device a is refused; b alone would have fit.
    with pytest.raises(BudgetExceededError, match="device 'a'") as info:
        ledger.spend([sgd_record("a", 1, steps=400), sgd_record("b", 1)], budget=budget)
    assert "'b'" not in str(info.value)
    assert ledger.records == before_records
    assert path.read_bytes() == before_bytes
    # Violations are collected: both scopes reported at once.
    with pytest.raises(BudgetExceededError) as info:
        ledger.spend([sgd_record("a", 1, steps=400), agg_record(("a",), 1, z=1.0)], budget=budget)
    assert "device 'a'" in str(info.value) and "global user-level" in str(info.value)
    assert path.read_bytes() == before_bytes
    # The dry run alone also changes nothing.
    with pytest.raises(BudgetExceededError):
        ledger.check([agg_record(("a",), 1, z=1.0)], budget=budget)
    assert ledger.records == before_records
    # A round within budget goes through.
    ledger.spend([sgd_record("b", 1), agg_record(("a", "b"), 1, z=8.0)], budget=budget)
    assert len(PrivacyLedger.load(path)) == 3


def test_pure_epsilon_budget():
    ledger = PrivacyLedger()
    budget = PrivacyBudget(delta=DELTA, user_epsilon=1.0)
    rec = LedgerRecord(
        run_id="r",
        round=0,
        mechanism="rr",
        event=PureEpsilonEvent(0.4),
        unit="user",
        devices=("a",),
        delta=0.0,
        adjacency="replace_one",
    )
    ledger.spend([rec], budget=budget)
    ledger.spend([rec], budget=budget)
    with pytest.raises(BudgetExceededError):
        ledger.spend([rec], budget=budget)
    assert ledger.epsilon(delta=DELTA, unit="user") == pytest.approx(0.8)


def test_partial_temp_file_from_a_crash_is_ignored(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.spend([sgd_record("a", 0)])
    good = path.read_bytes()
    # A crash mid-write leaves a truncated temp file beside the ledger.
    (tmp_path / ".ledger.jsonl.crashed.tmp").write_bytes(good + good[: len(good) // 2])
    loaded = PrivacyLedger.load(path)
    assert loaded.records == ledger.records
    loaded.spend([sgd_record("a", 1)])
    assert len(PrivacyLedger.load(path)) == 2


def test_failed_write_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.spend([sgd_record("a", 0)])
    good = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ledger.spend([sgd_record("a", 1)])
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert len(ledger) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda obj: obj.update(unit="device"), "`unit` must be one of"),
        (lambda obj: obj.update(seq=7), "`seq` must be 1"),
        (lambda obj: obj["event"].update(sample_rate=0.0), "sample_rate"),
        (lambda obj: obj.pop("devices"), "missing keys ['devices']"),
        (lambda obj: obj.update(v=4), "`v` must be one of [1, 2, 3]"),
        (lambda obj: obj.update(adjacency="add_one"), "`adjacency` must be one of"),
        (lambda obj: obj.pop("adjacency"), "missing keys ['adjacency']"),
    ],
)
def test_corrupt_line_is_named(tmp_path: Path, mutate, message):
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.spend([sgd_record("a", 0), sgd_record("a", 1), sgd_record("a", 2)])
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    mutate(obj)
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as info:
        PrivacyLedger.load(path)
    assert f"{path}:2:" in str(info.value)
    assert message in str(info.value)


def test_garbage_and_truncated_lines(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    path.write_text('{"not json\n')
    with pytest.raises(DataFormatError, match=":1:"):
        PrivacyLedger.load(path)
    ledger = PrivacyLedger(tmp_path / "b.jsonl")
    ledger.spend([sgd_record("a", 0)])
    data = (tmp_path / "b.jsonl").read_bytes()
    (tmp_path / "b.jsonl").write_bytes(data[:-10])
    with pytest.raises(DataFormatError, match="truncated"):
        PrivacyLedger.load(tmp_path / "b.jsonl")


def test_concurrent_modification_is_refused(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    first = PrivacyLedger(path)
    first.spend([sgd_record("a", 0)])
    second = PrivacyLedger.load(path)
    second.spend([sgd_record("b", 0)])
    with pytest.raises(LedgerConflictError):
        first.spend([sgd_record("c", 0)])
    assert len(PrivacyLedger.load(path)) == 2


# --- concurrent writers, file mode, temp files, format 1 (issue 12) -----------------


def _spend_many(path: str, tag: str, count: int, start, results) -> None:
    """One writer process: ``count`` spends of one record each; on a conflict it reloads
    the ledger and tries again (what a caller must do), so every spend lands once."""
    ledger = PrivacyLedger.open(path)
    start.wait(10)
    landed = conflicts = 0
    for i in range(count):
        while True:
            try:
                ledger.spend([sgd_record(f"{tag}{i}", i)])
                landed += 1
                break
            except LedgerConflictError:
                conflicts += 1
                ledger = PrivacyLedger.load(path)
    results.put((tag, landed, conflicts))


def test_two_processes_spending_on_one_ledger_never_lose_a_record(tmp_path: Path):
    """Issue 12: two processes that each spend 60 times used to leave 77-96 of 120
    records and no error. With the writers' lock each spend either lands or raises
    LedgerConflictError (and is retried), so all 120 are on disk, once each."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    path = tmp_path / "ledger.jsonl"
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_spend_many, args=(str(path), tag, 60, start, results))
        for tag in ("p", "q")
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
    alive = [proc for proc in procs if proc.is_alive()]
    for proc in alive:
        proc.kill()
    assert not alive, "a writer hung"
    assert [proc.exitcode for proc in procs] == [0, 0]
    outcome = {
        tag: (landed, conflicts)
        for tag, landed, conflicts in (results.get(timeout=5) for _ in procs)
    }
    assert outcome["p"][0] == outcome["q"][0] == 60
    loaded = PrivacyLedger.load(path)
    devices = [r.devices[0] for r in loaded.records]
    assert len(devices) == 120 and len(set(devices)) == 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl"]


def test_a_held_lock_refuses_after_the_timeout_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from protocols.dp import ledger as ledger_module

    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.spend([sgd_record("a", 0)])
    before = path.read_bytes()
    monkeypatch.setattr(ledger_module, "LOCK_TIMEOUT_S", 0.05)
    with (
        ledger_module._writer_lock(path),  # another writer holds it
        pytest.raises(LedgerConflictError, match="locked by another writer"),
    ):
        ledger.spend([sgd_record("a", 1)])
    assert path.read_bytes() == before and len(ledger) == 1
    ledger.spend([sgd_record("a", 1)])  # once it is free, the spend lands
    assert len(PrivacyLedger.load(path)) == 2


def test_rewrites_keep_the_file_mode_and_remove_crashed_temp_files(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    umask = os.umask(0o022)
    os.umask(umask)
    ledger = PrivacyLedger(path)
    ledger.spend([sgd_record("a", 0)])
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() creates it
    path.chmod(0o640)
    (tmp_path / ".ledger.jsonl.crashed.tmp").write_bytes(b"half a ledger")
    ledger.spend([sgd_record("a", 1)])
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.jsonl"]
    ledger.truncate(1)
    assert path.stat().st_mode & 0o777 == 0o640
    assert PrivacyLedger.load(path).records == (sgd_record("a", 0),)


def test_a_format_1_ledger_loads_with_unstated_adjacency_and_keeps_growing(tmp_path: Path):
    path = tmp_path / "ledger.jsonl"
    old = sgd_record("a", 0).to_dict()
    del old["adjacency"]
    path.write_text(json.dumps({"v": 1, "seq": 0, **old}, sort_keys=True) + "\n")
    ledger = PrivacyLedger.load(path)
    assert ledger.records[0].adjacency is None
    ledger.spend([sgd_record("a", 1)])
    again = PrivacyLedger.load(path)
    assert [r.adjacency for r in again.records] == [None, "add_remove"]
    assert [json.loads(line)["v"] for line in path.read_text().splitlines()] == [1, 2]
    with pytest.raises(InvalidParameterError, match="`adjacency` must be one of"):
        dataclasses.replace(sgd_record("a", 2), adjacency="add_one")  # type: ignore[arg-type]
