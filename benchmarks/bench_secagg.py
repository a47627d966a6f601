"""Benchmarks of protocols.secagg, side by side with Flower's SecAgg+ primitives.

Run (default grid: n in {10, 50, 100} x d in {1e4, 1e5}; 10 % dropout at the
masked-input stage, the server's worst case)::

    python -m pytest benchmarks/bench_secagg.py --benchmark-only

Full grid (n in {10, 50, 100, 200} x d in {1e4, 1e5, 1e6})::

    SECAGG_FULL=1 python -m pytest benchmarks/bench_secagg.py --benchmark-only

The Flower comparison runs only where ``flwr`` is importable (it is never a
dependency of this project); use a separate venv with ``flwr`` installed::

    PYTHONPATH=. <venv with flwr>/bin/python -m pytest benchmarks/bench_secagg.py \
        --benchmark-only -k flower

Each round benchmark records in ``extra_info``: mean and max per-client
seconds (every stage of one client), server seconds, and mean bytes sent
and received per client; wall-clock seconds, or CPU seconds of the process
with ``SECAGG_BENCH_CPU=1`` (both implementations alike; use it on a
shared machine together with ``--benchmark-timer=time.process_time``). Both
implementations use the same neighbours ``k``, threshold ``t``, clipping range
8, 22-bit quantization in 32-bit words, and the same dropped clients. ``test_secagg_round`` runs our default protocol (the
malicious-server variant with the consistency check).

The threat-model comparison (issue 13): the malicious-server protocol
(``active_security=True``: signed advertisements, consistency check, graph rule,
verified reconstruction) side by side with the honest-but-curious one, per stage,
at n in {100, 1000} and d = 1e5; ``malicious-vote-all`` addresses every vote to
every other survivor (``vote_slack = n``) instead of the default voting peers::

    python -m pytest benchmarks/bench_secagg.py --benchmark-only \
        -k threat_model --benchmark-json=bench_secagg_threat.json

How Flower is driven (it has no in-process driver): the client side calls the
stage functions of ``flwr.client.mod.secure_aggregation.secaggplus_mod``
(``_setup``, ``_share_keys``, ``_collect_masked_vectors``, ``_unmask``) with the
configs its workflow would send, skipping only the ConfigRecord state
round-trip of the mod (which would make Flower slower); the server side
re-implements, line for line, the logic of
``flwr.server.workflow.secure_aggregation.secaggplus_workflow.SecAggPlusWorkflow``
(shuffled ring of ``num_shares`` including the node itself, key forwarding,
ciphertext forwarding, modular sum, share combination, mask regeneration,
dequantization) with Flower's own primitives (``combine_shares``,
``generate_shared_key``, ``pseudo_rand_gen``, ``parameters_*``, ``dequantize``).
Flower's byte counts are payload bytes (keys, ciphertexts, ``ndarray_to_bytes``
vectors, 8 bytes per node id), without its protobuf framing.
"""

from __future__ import annotations

import importlib
import os
import random
import time
import types
from typing import Any

import numpy as np
import pytest

from protocols.secagg import SecAggConfig, SecureRandom, make_identity_keys, simulate_secure_sum
from protocols.secagg import driver as _driver
from protocols.secagg.prg import MaskExpander

FULL = os.environ.get("SECAGG_FULL", "") not in ("", "0")
#: ``SECAGG_BENCH_CPU=1``: time every party (ours and Flower's alike) in CPU time of
#: the process (all its threads: Flower's rounds run short-lived worker threads)
#: instead of wall-clock time — what to use on a shared machine, where other
#: jobs' load inflates wall-clock figures.
CPU = os.environ.get("SECAGG_BENCH_CPU", "") not in ("", "0")
_clock = time.process_time if CPU else time.perf_counter


@pytest.fixture(autouse=True)
def _party_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the driver's per-party timings use the same clock as this module."""
    if CPU:
        monkeypatch.setattr(_driver, "time", types.SimpleNamespace(perf_counter=_clock))


NS = (10, 50, 100, 200) if FULL else (10, 50, 100)
DS = (10_000, 100_000, 1_000_000) if FULL else (10_000, 100_000)
DROPOUT = 0.1
CLIP = 8.0
PRECISION = 22
GRID = [(n, d) for n in NS for d in DS]


def _inputs(n: int, d: int) -> list[np.ndarray]:
    rng = np.random.default_rng(n * 7 + d)
    return [rng.uniform(-1.0, 1.0, d) for _ in range(n)]


def _dropped(n: int) -> set[int]:
    return set(random.Random(n).sample(range(n), round(DROPOUT * n)))


def _config(n: int, d: int) -> SecAggConfig:
    return SecAggConfig(n_clients=n, vector_length=d, clip_range=CLIP, precision_bits=PRECISION)


def _record(benchmark: Any, **info: Any) -> None:
    for key, value in info.items():
        benchmark.extra_info[key] = value


@pytest.mark.parametrize(("n", "d"), GRID, ids=[f"n{n}-d{d}" for n, d in GRID])
def test_secagg_round(benchmark: Any, n: int, d: int) -> None:
    inputs = _inputs(n, d)
    cfg = _config(n, d)
    dropped = _dropped(n)
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["res"] = simulate_secure_sum(
            inputs, config=cfg, dropouts={"masked_input": dropped}, seed=1
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    res = holder["res"]
    exact = np.sum([inputs[i] for i in res.survivors], axis=0)
    err = float(np.max(np.abs(res.sum - exact)))
    assert err <= res.error_bound
    secs = list(res.client_seconds.values())
    _record(
        benchmark,
        impl="secrelay",
        n=n,
        d=d,
        k=cfg.k,
        t=cfg.t,
        client_s_mean=float(np.mean(secs)),
        client_s_max=float(np.max(secs)),
        server_s=res.server_seconds,
        bytes_sent_per_client=float(np.mean(list(res.bytes_sent.values()))),
        bytes_received_per_client=float(np.mean(list(res.bytes_received.values()))),
        max_abs_error=err,
    )


THREAT_GRID = [
    (n, 100_000, p)
    for n in (100, 1000)
    for p in ("honest-but-curious", "malicious", "malicious-keys-known", "malicious-vote-all")
]


@pytest.mark.parametrize(
    ("n", "d", "protocol"), THREAT_GRID, ids=[f"n{n}-d{d}-{p}" for n, d, p in THREAT_GRID]
)
def test_secagg_threat_model(benchmark: Any, n: int, d: int, protocol: str) -> None:
    """One round of each protocol; the per-stage split shows what the consistency
    check (and the authentication and checks around it) cost. ``malicious``: the
    clients derive every pairwise identity key in the round (first meeting);
    ``malicious-keys-known``: the same identity keys were used in a warm-up round,
    so each client already holds its pairwise keys (the steady state)."""
    inputs = _inputs(n, d)
    cfg = SecAggConfig(
        n_clients=n,
        vector_length=d,
        clip_range=CLIP,
        precision_bits=PRECISION,
        active_security=protocol != "honest-but-curious",
        vote_slack=n if protocol == "malicious-vote-all" else None,
    )
    dropped = _dropped(n)
    holder: dict[str, Any] = {}
    keys = None
    if protocol == "malicious-keys-known":
        keys, _ = make_identity_keys(n, rng=SecureRandom.from_seed(n, b"bench-pki"))

    def run() -> None:
        holder["res"] = simulate_secure_sum(
            inputs, config=cfg, dropouts={"masked_input": dropped}, seed=1, identity_keys=keys
        )

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=1 if keys else 0)
    res = holder["res"]
    exact = np.sum([inputs[i] for i in res.survivors], axis=0)
    assert float(np.max(np.abs(res.sum - exact))) <= res.error_bound
    secs = list(res.client_seconds.values())
    _record(
        benchmark,
        impl="secrelay",
        protocol=protocol,
        n=n,
        d=d,
        k=cfg.k,
        t=cfg.t,
        quorum=cfg.quorum if cfg.active_security else None,
        vote_slack=cfg.vote_slack if cfg.active_security else None,
        client_s_mean=float(np.mean(secs)),
        server_s=res.server_seconds,
        client_stage_s_mean={s.value: v / n for s, v in res.client_stage_seconds.items()},
        server_stage_s={s.value: v for s, v in res.server_stage_seconds.items()},
        bytes_sent_per_client=float(np.mean(list(res.bytes_sent.values()))),
        bytes_received_per_client=float(np.mean(list(res.bytes_received.values()))),
    )


@pytest.mark.parametrize("impl", ["aes_ctr", "mt19937"])
def test_mask_generation(benchmark: Any, impl: str) -> None:
    """One 10**6-word mask: our AES-256-CTR PRG vs numpy's Mersenne Twister (Flower's)."""
    d = 1_000_000
    seed = SecureRandom.from_seed(0).bytes(32)
    if impl == "aes_ctr":
        expander = MaskExpander(d, np.dtype("<u4"))
        benchmark(expander.expand, seed)
    else:
        seed32 = int.from_bytes(seed[:4], "little")

        def mt() -> np.ndarray:
            gen = np.random.RandomState(seed32)
            return gen.randint(0, (1 << 32) - 1, d, dtype=np.int64)

        benchmark(mt)
    benchmark.extra_info.update(impl=impl, d=d)


# --------------------------------------------------------------------- Flower


def _flower_round(inputs: list[np.ndarray], k: int, t: int, dropped: set[int]) -> dict[str, Any]:
    """One SecAgg+ round with Flower's client stage functions and workflow logic."""
    # The package re-exports a function of the same name; import the module itself.
    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (
        factor_extract,
        get_parameters_shape,
        parameters_addition,
        parameters_mod,
        parameters_subtraction,
    )
    from flwr.common.secure_aggregation.quantization import dequantize
    from flwr.common.secure_aggregation.secaggplus_constants import Key
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    n = len(inputs)
    nids = list(range(1, n + 1))  # node ids (never 0)
    dead_at_masking = {nids[i] for i in dropped}
    num_shares = k + 1  # Flower counts the node itself
    target_range, mod_range = 1 << PRECISION, 1 << 32
    client_s = dict.fromkeys(nids, 0.0)
    sent = dict.fromkeys(nids, 0)
    recv = dict.fromkeys(nids, 0)
    server_s = 0.0

    # ---- setup (server: neighbours; clients: _setup)
    t0 = _clock()
    shuffled = nids.copy()
    random.Random(0).shuffle(shuffled)
    half = num_shares >> 1
    neighbours = {
        nid: {shuffled[(idx + off) % n] for off in range(-half, half + 1)}
        for idx, nid in enumerate(shuffled)
    }
    setup_cfg = {
        Key.SAMPLE_NUMBER: n,
        Key.SHARE_NUMBER: num_shares,
        Key.THRESHOLD: t,
        Key.CLIPPING_RANGE: CLIP,
        Key.TARGET_RANGE: target_range,
        Key.MOD_RANGE: mod_range,
        Key.MAX_WEIGHT: 1.0,
    }
    server_s += _clock() - t0
    states: dict[int, Any] = {}
    pks: dict[int, list[bytes]] = {}
    for nid in nids:
        t0 = _clock()
        state = mod.SecAggPlusState()
        state.nid = nid
        res = mod._setup(state, dict(setup_cfg))
        client_s[nid] += _clock() - t0
        states[nid] = state
        pks[nid] = [res[Key.PUBLIC_KEY_1], res[Key.PUBLIC_KEY_2]]
        sent[nid] += sum(len(b) for b in pks[nid])

    # ---- share keys
    active = set(nids)
    fwd_ct: dict[int, list[bytes]] = {nid: [] for nid in active}
    fwd_src: dict[int, list[int]] = {nid: [] for nid in active}
    for nid in sorted(active):
        t0 = _clock()
        cfg = {str(v): pks[v] for v in neighbours[nid] & active}
        server_s += _clock() - t0
        recv[nid] += sum(len(b) + 8 for v in cfg for b in cfg[v])
        t0 = _clock()
        res = mod._share_keys(states[nid], cfg)
        client_s[nid] += _clock() - t0
        sent[nid] += sum(len(c) + 8 for c in res[Key.CIPHERTEXT_LIST])
        t0 = _clock()
        for dst, ct in zip(res[Key.DESTINATION_LIST], res[Key.CIPHERTEXT_LIST]):
            if dst in fwd_ct:
                fwd_ct[dst].append(ct)
                fwd_src[dst].append(nid)
        server_s += _clock() - t0

    # ---- collect masked vectors
    masked = None
    survivors = active - dead_at_masking
    for nid in sorted(survivors):
        cfg = {Key.CIPHERTEXT_LIST: fwd_ct[nid], Key.SOURCE_LIST: fwd_src[nid]}
        recv[nid] += sum(len(c) + 8 for c in fwd_ct[nid])
        params = ndarrays_to_parameters([inputs[nid - 1]])
        t0 = _clock()
        res = mod._collect_masked_vectors(states[nid], cfg, 1, params)
        client_s[nid] += _clock() - t0
        blobs = res[Key.MASKED_PARAMETERS]
        sent[nid] += sum(len(b) for b in blobs)
        t0 = _clock()
        vec = [bytes_to_ndarray(b) for b in blobs]
        masked = vec if masked is None else parameters_addition(masked, vec)
        server_s += _clock() - t0
    t0 = _clock()
    assert masked is not None
    masked = parameters_mod(masked, mod_range)
    active_nids = survivors
    dead_nids = set(nids) - active_nids
    server_s += _clock() - t0

    # ---- unmask
    collected: dict[int, list[bytes]] = {nid: [] for nid in nids}
    for nid in sorted(active_nids):
        cfg = {
            Key.ACTIVE_NODE_ID_LIST: list(neighbours[nid] & active_nids),
            Key.DEAD_NODE_ID_LIST: list(neighbours[nid] & dead_nids),
        }
        recv[nid] += 8 * (len(cfg[Key.ACTIVE_NODE_ID_LIST]) + len(cfg[Key.DEAD_NODE_ID_LIST]))
        t0 = _clock()
        res = mod._unmask(states[nid], cfg)
        client_s[nid] += _clock() - t0
        sent[nid] += sum(len(s) + 8 for s in res[Key.SHARE_LIST])
        t0 = _clock()
        for owner, share in zip(res[Key.NODE_ID_LIST], res[Key.SHARE_LIST]):
            collected[owner].append(share)
        server_s += _clock() - t0
    t0 = _clock()
    vec = masked
    for nid, share_list in collected.items():
        if len(share_list) < t:
            raise RuntimeError("Flower: not enough shares")
        secret = combine_shares(share_list)
        if nid in active_nids:
            vec = parameters_subtraction(
                vec, pseudo_rand_gen(secret, mod_range, get_parameters_shape(vec))
            )
        else:
            nbrs = set(neighbours[nid])
            nbrs.remove(nid)
            for other in nbrs:
                key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(pks[other][0])
                )
                pm = pseudo_rand_gen(key, mod_range, get_parameters_shape(vec))
                vec = (
                    parameters_addition(vec, pm) if nid > other else parameters_subtraction(vec, pm)
                )
    vec = parameters_mod(vec, mod_range)
    q_total, vec = factor_extract(vec)
    out = dequantize(vec, CLIP, target_range)
    out[0] += -(len(active_nids) - 1) * CLIP
    out[0] *= target_range / q_total
    server_s += _clock() - t0
    survivors_idx = sorted(nid - 1 for nid in active_nids)
    return {
        "sum": out[0] * len(active_nids),  # Flower returns the average
        "survivors": survivors_idx,
        "client_s": [client_s[nid] for nid in nids],
        "server_s": server_s,
        "sent": [sent[nid] for nid in nids],
        "recv": [recv[nid] for nid in nids],
    }


@pytest.mark.parametrize(("n", "d"), GRID, ids=[f"n{n}-d{d}" for n, d in GRID])
def test_flower_secaggplus_round(benchmark: Any, n: int, d: int) -> None:
    pytest.importorskip("flwr", reason="Flower is not installed (it is not a dependency)")
    inputs = _inputs(n, d)
    cfg = _config(n, d)  # same k and t as ours
    dropped = _dropped(n)
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["res"] = _flower_round(inputs, cfg.k, cfg.t, dropped)

    benchmark.pedantic(run, rounds=1, iterations=1)
    res = holder["res"]
    exact = np.sum([inputs[i] for i in res["survivors"]], axis=0)
    err = float(np.max(np.abs(res["sum"] - exact)))
    _record(
        benchmark,
        impl="flower",
        n=n,
        d=d,
        k=cfg.k,
        t=cfg.t,
        client_s_mean=float(np.mean(res["client_s"])),
        client_s_max=float(np.max(res["client_s"])),
        server_s=res["server_s"],
        bytes_sent_per_client=float(np.mean(res["sent"])),
        bytes_received_per_client=float(np.mean(res["recv"])),
        max_abs_error=err,
    )
