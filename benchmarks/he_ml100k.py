"""CKKS on MovieLens-100K: decisions, accuracy and cost of the encrypted flows.

    python benchmarks/he_ml100k.py selector  [--data DIR]   # selector decisions, all devices
    python benchmarks/he_ml100k.py matching  [--data DIR]   # top-K agreement, all devices
    python benchmarks/he_ml100k.py relayrec  --he {on,off} [--rounds R] --out DIR
    python benchmarks/he_ml100k.py coda      --privatize EPS|off --out DIR

``selector`` runs RelayRec's cloud phase as ``examples/relayrec_ml100k.toml`` does
(xDeepFM server model, K = 2 user clusters, C = 2 item categories), trains both the
plaintext ReLU selector and the HE-friendly square selector on the cloud users, and
for every one of the 943 devices compares the ReLU choice, the plaintext square
choice and the encrypted square choice (the full CKKS flow through a channel),
with per-device timing and bytes. ``matching`` builds CoDA's pool as
``examples/coda_ml100k.toml`` does (mean genre one-hot, 19 dims) and compares the
encrypted top K (K = 100) of every device with plaintext KNN. ``relayrec`` and
``coda`` are full runs of those example configs with the HE / privatization switch
set (the rest unchanged; RelayRec with ``privacy.randomness = "reproducible"`` so the
HE-on and HE-off runs sample the same devices); they print the final metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from secrelay.config import load_config
from secrelay.experiment import run
from secrelay.federated.transcript import Channel, Transcript
from secrelay.methods import make_train_config, prepare_data
from secrelay.models.base import make_model

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT.parent / "shared" / "data" / "ml-100k")


def selector(data_path: str) -> dict[str, object]:
    from secrelay.relay.relayrec import RelayRecOptions
    from secrelay.relay.relayrec.cloud import cluster_users, train_normal, user_representations
    from secrelay.relay.relayrec.he_selector import (
        HESelectorServer,
        encrypted_select,
        square_selector_logits,
        train_square_selector,
    )
    from secrelay.relay.relayrec.selector import fit_item_space, selector_logits, train_selector

    cfg = load_config(ROOT / "examples" / "relayrec_ml100k.toml", data={"path": data_path})
    opts = RelayRecOptions.from_mapping(cfg.method.options)
    data = prepare_data(cfg)
    seed = cfg.run.seed
    server = make_model(
        opts.server_model,
        data.full.schema,
        seed=seed,
        embedding_dim=cfg.model.embedding_dim,
        **opts.server_model_options,
    )
    train_normal(server, data.cloud, make_train_config(cfg.cloud), seed=seed)
    users, reps = user_representations(server, data.cloud)
    labels = cluster_users(reps, opts.num_clusters, seed=seed)
    space, _ = fit_item_space(server, data.cloud, opts.num_categories, seed=seed)
    by_user = data.cloud.by_user()
    prefs = np.stack([space.preference(data.cloud.subset(by_user[int(u)])) for u in users])
    kw = {"hidden": opts.selector_hidden, "epochs": opts.selector_epochs, "lr": opts.selector_lr}
    relu, acc_relu = train_selector(prefs, labels, opts.num_clusters, seed=seed, **kw)
    square, acc_sq = train_square_selector(prefs, labels, opts.num_clusters, seed=seed, **kw)
    he = HESelectorServer(square, opts.he_parameters(), radix=opts.he_radix)
    channel = Channel(Transcript(keep_payloads=False))
    agree_he, agree_relu, gaps, n = 0, 0, [], 0
    t0 = time.perf_counter()
    for dev, dd in sorted(data.devices.items()):
        p = space.preference(dd.train)
        enc = encrypted_select(dev, p, channel=channel, server=he)
        plain_sq = square_selector_logits(square, p)
        agree_he += int(np.argmax(enc) == np.argmax(plain_sq))
        he.stats.plaintext_agreement += int(np.argmax(enc) == np.argmax(plain_sq))
        agree_relu += int(np.argmax(plain_sq) == np.argmax(selector_logits(relu, p)))
        gaps.append(float(np.abs(np.diff(enc) - np.diff(plain_sq)).max()))
        n += 1
    wall = time.perf_counter() - t0
    return {
        "devices": n,
        "input_dim": he.layout.inputs,
        "galois_steps": list(he.layout.galois_steps),
        "selector_train_accuracy_relu": acc_relu,
        "selector_train_accuracy_square": acc_sq,
        "encrypted_vs_plaintext_square_agreement": agree_he / n,
        "square_vs_relu_agreement": agree_relu / n,
        "max_logit_difference_error": max(gaps),
        "wall_seconds_all_devices": wall,
        **he.stats.as_metrics(),
        "traffic": channel.transcript.summary(),
    }


def matching(data_path: str, k: int = 100) -> dict[str, object]:
    from protocols.he import MATCHING_PARAMETERS
    from secrelay.relay.coda.device import device_user_vector
    from secrelay.relay.coda.he_matching import HEMatchServer, encrypted_match
    from secrelay.relay.coda.matching import KNNMatcher, default_user_feature, user_vectors

    cfg = load_config(ROOT / "examples" / "coda_ml100k.toml", data={"path": data_path})
    data = prepare_data(cfg)
    feature = default_user_feature(data.full.schema)
    pool_users, pool_vecs = user_vectors(data.cloud, feature)
    knn = KNNMatcher(pool_users, pool_vecs)
    row = {int(u): i for i, u in enumerate(pool_users)}
    server = HEMatchServer(pool_users, pool_vecs, MATCHING_PARAMETERS)
    channel = Channel(Transcript(keep_payloads=False))
    exact = ties = n = 0
    t0 = time.perf_counter()
    for dev, dd in sorted(data.devices.items()):
        v = device_user_vector(dd.train, feature)
        got = encrypted_match(dev, 1, v, k=k, channel=channel, server=server)
        want = knn.match(v[None, :], k=k)[0]
        exact += int(set(got.tolist()) == set(want.tolist()))
        server.stats.topk_exact += int(set(got.tolist()) == set(want.tolist()))
        x = np.asarray(pool_vecs, dtype=np.float64)
        vv = np.asarray(v, dtype=np.float64)

        def d(us: np.ndarray, x: np.ndarray = x, vv: np.ndarray = vv) -> np.ndarray:
            return np.sort(((x[[row[int(u)] for u in us]] - vv) ** 2).sum(axis=1))

        tie = int(np.allclose(d(got), d(want), rtol=0, atol=1e-6))
        ties += tie
        server.stats.topk_ties += tie
        n += 1
    return {
        "devices": n,
        "pool_users": int(pool_users.size),
        "dimension": int(pool_vecs.shape[1]),
        "k": k,
        "topk_exact_agreement": exact / n,
        "topk_agreement_up_to_ties": ties / n,
        "wall_seconds_all_devices": time.perf_counter() - t0,
        **server.stats.as_metrics(),
    }


def full_run(kind: str, switch: str, out: Path, rounds: int | None, data_path: str) -> dict:
    if kind == "relayrec":
        over: dict[str, dict[str, object]] = {
            "privacy": {"he_selector": switch == "on", "randomness": "reproducible"}
        }
        if rounds:
            over["federated"] = {"rounds": rounds}
        cfg = load_config(
            ROOT / "examples" / "relayrec_ml100k.toml", data={"path": data_path}, **over
        )
    else:
        opts = (
            {} if switch == "off" else {"privatize_samples": True, "sample_epsilon": float(switch)}
        )
        base = load_config(ROOT / "examples" / "coda_ml100k.toml", data={"path": data_path})
        cfg = base.replace(method={"options": {**base.method.options, **opts}})
    t0 = time.perf_counter()
    res = run(cfg, out, overwrite=True, log=lambda s: None)
    last = res.records[-1]
    keep = {
        k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return {"wall_seconds": time.perf_counter() - t0, "final": res.final.get("final"), "last": keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["selector", "matching", "relayrec", "coda"])
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--he", default="on", choices=["on", "off"])
    ap.add_argument("--privatize", default="off", help="sample ε, or off")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/he"))
    a = ap.parse_args()
    if a.what == "selector":
        out = selector(a.data)
    elif a.what == "matching":
        out = matching(a.data)
    elif a.what == "relayrec":
        out = full_run("relayrec", a.he, a.out, a.rounds, a.data)
    else:
        out = full_run("coda", a.privatize, a.out, None, a.data)
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
