"""Regenerate the secure-aggregation known-answer vectors (run from the repo root).

    python tests/vectors/secagg_make_vectors.py

PRG vectors are computed independently of :mod:`protocols.secagg.prg`: the
AES-256-CTR keystream is rebuilt block by block with AES-256-ECB on the
big-endian counter blocks 0, 1, 2, .... Shamir shares are computed by direct
polynomial evaluation from the coefficients; the coefficients are the
documented draws ``SecureRandom.from_seed(seed, b"kat").randbelow(PRIME)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols.secagg.rng import SecureRandom
from protocols.secagg.shamir import PRIME

HERE = Path(__file__).parent


def aes_ctr_words(seed: bytes, nbytes_word: int, count: int) -> list[int]:
    blocks = (nbytes_word * count + 15) // 16
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    stream = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(blocks))
    return [
        int.from_bytes(stream[i * nbytes_word : (i + 1) * nbytes_word], "little")
        for i in range(count)
    ]


def prg_vectors() -> list[dict[str, object]]:
    seeds = [bytes(32), bytes(range(32)), hashlib.sha256(b"secrelay secagg").digest()]
    out: list[dict[str, object]] = []
    for seed in seeds:
        for nbytes_word in (2, 4, 8):
            out.append(
                {
                    "seed": seed.hex(),
                    "dtype": f"<u{nbytes_word}",
                    "first_words": aes_ctr_words(seed, nbytes_word, 12),
                }
            )
    return out


def shamir_vectors() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    cases = [
        (bytes(32), 2, [0, 1, 2], 1),
        (bytes(range(32)), 3, [0, 4, 7, 9, 12], 2),
        (b"\xff" * 32, 5, list(range(8)), 3),
        (hashlib.sha256(b"x25519 key").digest(), 4, [3, 10, 11, 20, 99, 1000], 4),
    ]
    for secret, t, holders, seed in cases:
        rng = SecureRandom.from_seed(seed, b"kat")
        coeffs = [int.from_bytes(secret, "big")] + [rng.randbelow(PRIME) for _ in range(t - 1)]
        shares = {
            str(h): sum(c * pow(h + 1, j, PRIME) for j, c in enumerate(coeffs)) % PRIME
            for h in holders
        }
        out.append(
            {
                "secret": secret.hex(),
                "threshold": t,
                "holders": holders,
                "rng_seed": seed,
                "coefficients": [format(c, "x") for c in coeffs],
                "shares": {h: format(v, "066x") for h, v in shares.items()},
            }
        )
    return out


def main() -> None:
    prime = {"prime_hex": format(PRIME, "x"), "prime": "2**256 + 297"}
    (HERE / "secagg_prg.json").write_text(
        json.dumps({"cipher": "AES-256-CTR, zero IV", "vectors": prg_vectors()}, indent=1) + "\n"
    )
    (HERE / "secagg_shamir.json").write_text(
        json.dumps({**prime, "vectors": shamir_vectors()}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
