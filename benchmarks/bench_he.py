"""CKKS cost per device: RelayRec's encrypted selector and CoDA's encrypted matching.

All at 128-bit security (``protocols.he`` presets, N = 8192), on one core (SEAL runs
each operation single-threaded), one device at a time:

``selector-d{8,16,32,64}``
    A square-activation selector, H = 32 hidden units, K = 2 outputs, radix 4
    (``SquareNetwork``; primes 60-40-40-60, Δ = 2^40). The timed call is one device's
    *online* round trip: encrypt p_u, the server loads the public context and the
    ciphertext and evaluates, the device decrypts and decodes. ``extra_info`` has each
    part (keygen, encrypt, server, decrypt; seconds) and the bytes: public context,
    query up, reply down.
``matching-n{1000,10000,100000}``
    Scores of a pool of n users (vectors of dimension 19, ML-100K's genres) against an
    encrypted user vector (``PackedMatVec``; primes 60-40-60). The timed call is the
    online round trip with the pool order shuffled per request (what
    ``he_shuffle_pool = true`` does: the pool is re-encoded for every request);
    ``extra_info`` also has the server time with a fixed, cached pool order.

Commands::

    nice python -m pytest benchmarks/bench_he.py --benchmark-only \\
        --benchmark-json=he.json -p no:cacheprovider
    python benchmarks/bench_he.py --table he.json   # the table in docs/results.md

Environment: ``BENCH_HE_ROUNDS`` (timed rounds per case, default 5).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import pytest

from protocols.he import (
    MATCHING_PARAMETERS,
    SELECTOR_PARAMETERS,
    PackedMatVec,
    PublicContext,
    SecretContext,
    SquareNetwork,
)

ROUNDS = int(os.environ.get("BENCH_HE_ROUNDS", "5"))


def _selector(d: int, h: int = 32, k: int = 2) -> SquareNetwork:
    rng = np.random.default_rng(d)
    return SquareNetwork.from_layers(
        rng.normal(0, 1 / np.sqrt(d), (d, h)),
        rng.normal(0, 0.1, h),
        rng.normal(0, 1 / np.sqrt(h), (h, k)),
        rng.normal(0, 0.1, k),
        params=SELECTOR_PARAMETERS,
    )


def _pool(n: int, m: int = 19) -> np.ndarray:
    x = np.random.default_rng(n).random((n, m)) ** 3
    x /= x.sum(axis=1, keepdims=True)
    return x


def _round_trip(plan: Any, x: np.ndarray, parts: dict[str, float], keys: SecretContext) -> Any:
    t = time.perf_counter()
    up = keys.encrypt(plan.layout.encode_input(x))
    parts["encrypt"] = time.perf_counter() - t
    t = time.perf_counter()
    ctx = PublicContext.from_bytes(parts["_context"])  # type: ignore[arg-type]
    ct = ctx.load_ciphertexts(up, count=1)[0]
    down = ctx.dump_ciphertexts(plan.evaluate(ctx, ct))
    parts["server"] = time.perf_counter() - t
    t = time.perf_counter()
    out = plan.layout.decode_output(keys.decrypt(down))
    parts["decrypt"] = time.perf_counter() - t
    parts["_up"], parts["_down"] = len(up), len(down)  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("d", [8, 16, 32, 64])
def test_selector(benchmark: Any, d: int) -> None:
    net = _selector(d)
    t = time.perf_counter()
    keys = SecretContext(SELECTOR_PARAMETERS, galois_steps=net.galois_steps, relin_keys=True)
    context = keys.serialize()
    keygen = time.perf_counter() - t
    x = np.random.default_rng(0).uniform(-1, 1, d)
    parts: dict[str, Any] = {"_context": context}
    out = benchmark.pedantic(
        _round_trip, args=(net, x, parts, keys), rounds=ROUNDS, iterations=1, warmup_rounds=1
    )
    np.testing.assert_allclose(out, net.reference(x), atol=1e-4)
    benchmark.extra_info.update(
        {
            "flow": "selector",
            "size": d,
            "keygen_s": keygen,
            "encrypt_s": parts["encrypt"],
            "server_s": parts["server"],
            "decrypt_s": parts["decrypt"],
            "context_bytes": len(context),
            "up_bytes": parts["_up"],
            "down_bytes": parts["_down"],
            "galois_keys": len(net.galois_steps),
            "rotations": net.last_stats.rotations,
        }
    )


@pytest.mark.parametrize("n", [1000, 10000, 100000])
def test_matching(benchmark: Any, n: int) -> None:
    x = _pool(n)
    rng = np.random.default_rng(1)
    v = x[3] + 0.01

    class Shuffled:
        """A fresh random pool order per request, as HEMatchServer does."""

        layout = PackedMatVec(2 * x, -(x**2).sum(axis=1), params=MATCHING_PARAMETERS).layout

        def evaluate(self, ctx: PublicContext, ct: Any) -> Any:
            order = np.argsort(rng.random(n))
            xo = x[order]
            plan = PackedMatVec(
                2 * xo, -(xo**2).sum(axis=1), params=MATCHING_PARAMETERS, cache_plaintexts=False
            )
            return plan.evaluate(ctx, ct)

    shuffled = Shuffled()
    t = time.perf_counter()
    keys = SecretContext(MATCHING_PARAMETERS, galois_steps=shuffled.layout.galois_steps)
    context = keys.serialize()
    keygen = time.perf_counter() - t
    parts: dict[str, Any] = {"_context": context}
    out = benchmark.pedantic(
        _round_trip, args=(shuffled, v, parts, keys), rounds=ROUNDS, iterations=1, warmup_rounds=0
    )
    assert out.shape == (n,)
    # The fixed-order server with its encoded pool cached (what he_shuffle_pool = false does).
    fixed = PackedMatVec(2 * x, -(x**2).sum(axis=1), params=MATCHING_PARAMETERS)
    cached: dict[str, Any] = {"_context": context}
    _round_trip(fixed, v, cached, keys)  # encodes the pool once
    times = []
    for _ in range(3):
        got = _round_trip(fixed, v, cached, keys)
        times.append(cached["server"])
    np.testing.assert_allclose(got, fixed.reference(v), atol=1e-5)
    benchmark.extra_info.update(
        {
            "flow": "matching",
            "size": n,
            "keygen_s": keygen,
            "encrypt_s": parts["encrypt"],
            "server_s": parts["server"],
            "server_cached_s": float(np.median(times)),
            "decrypt_s": parts["decrypt"],
            "context_bytes": len(context),
            "up_bytes": parts["_up"],
            "down_bytes": parts["_down"],
            "galois_keys": len(fixed.galois_steps),
            "rotations": fixed.last_stats.rotations,
            "plain_products": fixed.last_stats.plain_products,
        }
    )


def _table(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    rows = [
        "| case | online round trip, median (min) | keygen | encrypt | server | server, cached pool | decrypt | context | up | down |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in data["benchmarks"]:
        e, s = b["extra_info"], b["stats"]
        cached = f"{1e3 * e['server_cached_s']:.0f} ms" if "server_cached_s" in e else "—"
        rows.append(
            f"| {e['flow']} {'d' if e['flow'] == 'selector' else 'n'} = {e['size']} "
            f"| {1e3 * s['median']:.0f} ms ({1e3 * s['min']:.0f}) "
            f"| {1e3 * e['keygen_s']:.0f} ms | {1e3 * e['encrypt_s']:.1f} ms "
            f"| {1e3 * e['server_s']:.0f} ms | {cached} | {1e3 * e['decrypt_s']:.1f} ms "
            f"| {e['context_bytes'] / 1e6:.2f} MB | {e['up_bytes'] / 1e3:.0f} kB "
            f"| {e['down_bytes'] / 1e3:.0f} kB |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", metavar="JSON", help="print the table of a --benchmark-json file")
    args = ap.parse_args()
    if args.table:
        print(_table(args.table))
    else:
        raise SystemExit(
            pytest.main([__file__, "--benchmark-only", "-p", "no:cacheprovider", "-q"])
        )
