"""The acceptance checks of the encrypted flows on MovieLens-100K (slow; skipped when
the data is absent): the encrypted selector agrees with the plaintext square selector
on >= 99.5 % of devices, encrypted matching returns the plaintext top K up to ties
(the same multiset of distances) on every device and as a set on >= 97 %.
The full figures (all 943 devices, RelayRec gAUC with HE on and off) are in
docs/results.md, from ``benchmarks/he_ml100k.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protocols.he import MATCHING_PARAMETERS
from secrelay.config import load_config
from secrelay.federated.transcript import Channel, Transcript
from secrelay.methods import make_train_config, prepare_data
from secrelay.models.base import make_model

pytestmark = [pytest.mark.slow, pytest.mark.movielens]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
DEVICES = 300  # of 943, to keep the slow run to a few minutes


def test_encrypted_selector_agrees_with_the_plaintext_square_selector(ml100k_path: Path) -> None:
    from secrelay.relay.relayrec import RelayRecOptions
    from secrelay.relay.relayrec.cloud import cluster_users, train_normal, user_representations
    from secrelay.relay.relayrec.he_selector import (
        HESelectorServer,
        encrypted_select,
        square_selector_logits,
        train_square_selector,
    )
    from secrelay.relay.relayrec.selector import fit_item_space

    cfg = load_config(EXAMPLES / "relayrec_ml100k.toml", data={"path": str(ml100k_path)})
    opts = RelayRecOptions.from_mapping(cfg.method.options)
    data = prepare_data(cfg)
    server = make_model(
        opts.server_model,
        data.full.schema,
        seed=0,
        embedding_dim=cfg.model.embedding_dim,
        **opts.server_model_options,
    )
    train_normal(server, data.cloud, make_train_config(cfg.cloud), seed=0)
    users, reps = user_representations(server, data.cloud)
    labels = cluster_users(reps, opts.num_clusters, seed=0)
    space, _ = fit_item_space(server, data.cloud, opts.num_categories, seed=0)
    by_user = data.cloud.by_user()
    prefs = np.stack([space.preference(data.cloud.subset(by_user[int(u)])) for u in users])
    square, _ = train_square_selector(prefs, labels, opts.num_clusters, seed=0)
    he = HESelectorServer(square, opts.he_parameters())
    channel = Channel(Transcript(keep_payloads=False))
    agree = n = 0
    for dev, dd in sorted(data.devices.items())[:DEVICES]:
        p = space.preference(dd.train)
        enc = encrypted_select(dev, p, channel=channel, server=he)
        agree += int(np.argmax(enc) == np.argmax(square_selector_logits(square, p)))
        n += 1
    assert agree / n >= 0.995
    assert he.stats.context_bytes / n < 5e6


def test_encrypted_matching_returns_the_plaintext_top_k(ml100k_path: Path) -> None:
    from secrelay.relay.coda.device import device_user_vector
    from secrelay.relay.coda.he_matching import HEMatchServer, encrypted_match
    from secrelay.relay.coda.matching import KNNMatcher, default_user_feature, user_vectors

    cfg = load_config(EXAMPLES / "coda_ml100k.toml", data={"path": str(ml100k_path)})
    data = prepare_data(cfg)
    feature = default_user_feature(data.full.schema)
    pool_users, pool_vecs = user_vectors(data.cloud, feature)
    knn = KNNMatcher(pool_users, pool_vecs)
    server = HEMatchServer(pool_users, pool_vecs, MATCHING_PARAMETERS)
    channel = Channel(Transcript(keep_payloads=False))
    row = {int(u): i for i, u in enumerate(pool_users)}

    def distances(users: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = np.asarray(pool_vecs, dtype=np.float64)[[row[int(u)] for u in users]]
        return np.sort(((x - np.asarray(v, dtype=np.float64)) ** 2).sum(axis=1))

    same = n = 0
    for dev, dd in sorted(data.devices.items())[:DEVICES]:
        v = device_user_vector(dd.train, feature)
        got = encrypted_match(dev, 1, v, k=100, channel=channel, server=server)
        plain = knn.match(v[None, :], k=100)[0]
        # CKKS noise may reorder pool users at *equal* distance at the k-th place
        # (docs/results.md: 935 / 943 as sets, 943 / 943 up to ties), so the exact
        # check is the multiset of distances; set equality only on most devices.
        assert np.allclose(distances(got, v), distances(plain, v), rtol=0, atol=1e-6), dev
        same += int(set(got.tolist()) == set(plain.tolist()))
        n += 1
    assert same / n >= 0.97
