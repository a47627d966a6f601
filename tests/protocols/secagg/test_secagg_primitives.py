"""Shamir secret sharing, mask expansion (PRG) and the CSPRNG: known answers and properties."""

from __future__ import annotations

import contextlib
import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import InvalidParameterError, MessageError
from protocols.secagg import SecureRandom, combine_shares, expand_mask, split_secret
from protocols.secagg.prg import MaskExpander
from protocols.secagg.shamir import PRIME, share_from_bytes, share_to_bytes

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rnd = random.Random(12345)
    for _ in range(rounds):
        x = pow(rnd.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


# ------------------------------------------------------------------- Shamir


def test_field_is_smallest_prime_above_2_256() -> None:
    assert PRIME == 2**256 + 297
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime(2**256 + i) for i in range(1, 297, 2))


def test_shamir_known_answer_vectors() -> None:
    data = json.loads((VECTORS / "secagg_shamir.json").read_text())
    assert int(data["prime_hex"], 16) == PRIME
    for vec in data["vectors"]:
        secret = bytes.fromhex(vec["secret"])
        t = vec["threshold"]
        holders = vec["holders"]
        expected = {int(h): int(v, 16) for h, v in vec["shares"].items()}
        coeffs = [int(c, 16) for c in vec["coefficients"]]
        # Independent check of the vector: direct polynomial evaluation.
        for h, v in expected.items():
            assert sum(c * pow(h + 1, j, PRIME) for j, c in enumerate(coeffs)) % PRIME == v
        shares = split_secret(
            secret,
            threshold=t,
            holder_ids=holders,
            rng=SecureRandom.from_seed(vec["rng_seed"], b"kat"),
        )
        assert shares == expected
        assert combine_shares(expected, threshold=t) == secret


@pytest.mark.parametrize(("t", "m"), [(2, 2), (2, 3), (3, 5), (4, 6), (5, 7)])
def test_any_t_shares_reconstruct_all_combinations(t: int, m: int) -> None:
    rng = SecureRandom.from_seed(t * 100 + m)
    secret = rng.bytes(32)
    holders = [3 * i + 1 for i in range(m)]
    shares = split_secret(secret, threshold=t, holder_ids=holders, rng=rng)
    for size in range(t, m + 1):
        for subset in itertools.combinations(holders, size):
            assert combine_shares({h: shares[h] for h in subset}, threshold=t) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    rng = SecureRandom.from_seed(1)
    shares = split_secret(bytes(32), threshold=3, holder_ids=[0, 1, 2], rng=rng)
    with pytest.raises(InvalidParameterError, match="need at least 3 shares"):
        combine_shares({0: shares[0], 1: shares[1]}, threshold=3)


def test_t_minus_one_shares_do_not_determine_the_secret() -> None:
    # With t-1 = 2 shares fixed, every candidate secret is consistent with exactly
    # one polynomial: interpolating (0, s') and the two shares always succeeds and
    # yields a valid third share, whatever s' is.
    rng = SecureRandom.from_seed(2)
    shares = split_secret(rng.bytes(32), threshold=3, holder_ids=[0, 1, 2], rng=rng)
    known = {0: shares[0], 1: shares[1]}
    for candidate in (bytes(32), b"\x01" * 32, rng.bytes(32)):
        s = int.from_bytes(candidate, "big")
        # Lagrange through x=0 (s), x=1, x=2 evaluated at x=3 (holder 2).
        pts = [(0, s), (1, known[0]), (2, known[1])]
        y3 = 0
        for i, (xi, yi) in enumerate(pts):
            num = den = 1
            for j, (xj, _) in enumerate(pts):
                if i != j:
                    num = num * (3 - xj) % PRIME
                    den = den * (xi - xj) % PRIME
            y3 = (y3 + yi * num * pow(den, -1, PRIME)) % PRIME
        assert combine_shares({**known, 2: y3}, threshold=3) == candidate


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_t_minus_one_shares_are_identically_distributed_for_two_secrets() -> None:
    # One share (t = 2) of the all-zero secret vs the all-one secret: its low byte
    # is uniform for both and the two histograms are homogeneous.
    rng = SecureRandom.from_seed(3)
    hists = []
    for secret in (bytes(32), b"\xff" * 32):
        low = np.array(
            [
                split_secret(secret, threshold=2, holder_ids=[0, 1], rng=rng)[0] & 0xFF
                for _ in range(4000)
            ]
        )
        counts = np.bincount(low, minlength=256)
        # df = 255; the 0.9999 quantile of chi2(255) is about 355.
        assert _chi2(counts) < 355
        hists.append(counts)
    table = np.array(hists, dtype=float)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    assert float(((table - expected) ** 2 / expected).sum()) < 355


@settings(max_examples=30, deadline=None)
@given(
    secret=st.binary(min_size=32, max_size=32),
    m=st.integers(min_value=2, max_value=40),
    data=st.data(),
)
def test_shamir_reconstructs_property(secret: bytes, m: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=2, max_value=m))
    holders = data.draw(st.lists(st.integers(0, 10**6), min_size=m, max_size=m, unique=True))
    rng = SecureRandom.from_seed(data.draw(st.integers(0, 2**32)))
    shares = split_secret(secret, threshold=t, holder_ids=holders, rng=rng)
    subset = data.draw(st.lists(st.sampled_from(holders), min_size=t, max_size=m, unique=True))
    assert combine_shares({h: shares[h] for h in subset}, threshold=t) == secret


def test_inconsistent_shares_are_detected_or_change_the_secret() -> None:
    rng = SecureRandom.from_seed(4)
    secret = rng.bytes(32)
    shares = split_secret(secret, threshold=2, holder_ids=[0, 1], rng=rng)
    shares[1] = (shares[1] + 1) % PRIME
    with contextlib.suppress(MessageError):
        assert combine_shares(shares, threshold=2) != secret


def test_share_serialization_round_trip_and_validation() -> None:
    for v in (0, 1, PRIME - 1):
        assert share_from_bytes(share_to_bytes(v)) == v
    with pytest.raises(MessageError, match="not a field element"):
        share_from_bytes(PRIME.to_bytes(33, "big"))
    with pytest.raises(MessageError, match="33 bytes"):
        share_from_bytes(b"\x00" * 32)


def test_split_secret_validates_arguments() -> None:
    rng = SecureRandom.from_seed(5)
    with pytest.raises(InvalidParameterError, match="`secret` must be 32 bytes"):
        split_secret(b"short", threshold=2, holder_ids=[0, 1], rng=rng)
    with pytest.raises(InvalidParameterError, match="`threshold` must be in"):
        split_secret(bytes(32), threshold=1, holder_ids=[0, 1], rng=rng)
    with pytest.raises(InvalidParameterError, match="distinct"):
        split_secret(bytes(32), threshold=2, holder_ids=[0, 0], rng=rng)


# ---------------------------------------------------------------------- PRG


def test_prg_known_answer_vectors() -> None:
    data = json.loads((VECTORS / "secagg_prg.json").read_text())
    for vec in data["vectors"]:
        seed = bytes.fromhex(vec["seed"])
        dtype = np.dtype(vec["dtype"])
        words = vec["first_words"]
        got = expand_mask(seed, len(words), dtype)
        assert got.tolist() == words
        assert MaskExpander(len(words), dtype).expand(seed).tolist() == words


def test_prg_matches_published_aes_value() -> None:
    # AES-256 of the zero block under the zero key is dc95c078a2408989ad48a21492842087
    # (a widely published value); the first words of the zero seed's mask are it.
    first = expand_mask(bytes(32), 2, np.dtype("<u8")).tolist()
    block = bytes.fromhex("dc95c078a2408989ad48a21492842087")
    assert first == [int.from_bytes(block[:8], "little"), int.from_bytes(block[8:], "little")]


def test_prg_matches_independent_ecb_construction_on_long_masks() -> None:
    seed = bytes(range(1, 33))
    n = 1000
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    stream = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(n * 4 // 16))
    np.testing.assert_array_equal(
        expand_mask(seed, n, np.dtype("<u4")), np.frombuffer(stream, dtype="<u4")
    )


def test_prg_full_seed_is_used() -> None:
    # Seeds that agree after folding to 32 bits (Flower's weakness) give different masks.
    a = bytes(32)
    b = bytes(4) * 6 + b"\x01\x02\x03\x04" * 2  # XOR-fold of the 8 words is 0 for both
    assert not np.array_equal(
        expand_mask(a, 8, np.dtype("<u4")), expand_mask(b, 8, np.dtype("<u4"))
    )


def test_prg_output_is_uniform() -> None:
    words = expand_mask(SecureRandom.from_seed(6).bytes(32), 1 << 16, np.dtype("<u2"))
    for shift in (0, 8):
        counts = np.bincount((words >> shift) & 0xFF, minlength=256)
        assert _chi2(counts) < 355


def test_mask_expander_reuses_buffer_and_matches() -> None:
    ex = MaskExpander(33, np.dtype("<u8"))
    s1, s2 = bytes(range(32)), bytes(range(1, 33))
    m1 = ex.expand(s1).copy()
    m2 = ex.expand(s2)
    np.testing.assert_array_equal(m1, expand_mask(s1, 33, np.dtype("<u8")))
    np.testing.assert_array_equal(m2, expand_mask(s2, 33, np.dtype("<u8")))
    assert not m2.flags.writeable


# ---------------------------------------------------------------------- CSPRNG


def test_secure_random_is_deterministic_only_from_seed() -> None:
    assert SecureRandom.from_seed(7, b"a").bytes(16) == SecureRandom.from_seed(7, b"a").bytes(16)
    assert SecureRandom.from_seed(7, b"a").bytes(16) != SecureRandom.from_seed(7, b"b").bytes(16)
    assert SecureRandom().bytes(16) != SecureRandom().bytes(16)
    assert "hidden" in repr(SecureRandom())


def test_secure_random_uniform_and_randbelow() -> None:
    rng = SecureRandom.from_seed(8)
    u = rng.random(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.005
    draws = [rng.randbelow(3) for _ in range(3000)]
    assert set(draws) == {0, 1, 2}
    assert all(abs(draws.count(v) - 1000) < 150 for v in range(3))


# ------------------------------------------------- PKI and the graph rule (issue 13)


def test_identity_keys_pairwise_keys_are_symmetric_and_secret_in_repr() -> None:
    from protocols.secagg import IdentityDirectory, make_identity_keys

    keys, pki = make_identity_keys(4, rng=SecureRandom.from_seed(3, b"pki"))
    assert keys[0].pairwise_key(pki.public_key(1)) == keys[1].pairwise_key(pki.public_key(0))
    assert keys[0].pairwise_key(pki.public_key(1)) != keys[0].pairwise_key(pki.public_key(2))
    assert "hidden" in repr(keys[0]) and "fingerprint" in repr(pki)
    with pytest.raises(InvalidParameterError, match="small order"):
        IdentityDirectory((bytes(32), pki.public_key(1)))
    with pytest.raises(InvalidParameterError, match="distinct"):
        IdentityDirectory((pki.public_key(1), pki.public_key(1)))
    with pytest.raises(MessageError, match="no identity key known for client 9"):
        pki.public_key(9)


def _connected_without(adj: dict[int, set[int]], removed: set[int]) -> bool:
    left = [v for v in adj if v not in removed]
    if len(left) < 2:
        return True
    seen, stack = {left[0]}, [left[0]]
    while stack:
        for w in adj[stack.pop()]:
            if w not in removed and w not in seen:
                seen.add(w)
                stack.append(w)
    return len(seen) == len(left)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_separator_size_matches_brute_force(data: st.DataObject) -> None:
    from protocols.secagg import make_graph

    n = data.draw(st.integers(4, 13))
    k = data.draw(st.sampled_from(list(range(2, n - 1, 2))))
    g = make_graph(n, k, data.draw(st.binary(min_size=16, max_size=16)))
    members = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1)))
    adj = {u: set(g[u]) & set(members) for u in members}
    expected = None
    for size in range(len(members) - 1):
        if any(
            not _connected_without(adj, set(cut)) for cut in itertools.combinations(members, size)
        ):
            expected = size
            break
    assert g.separator_size(members) == expected
