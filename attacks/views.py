"""Frozen views: exactly what the threat model grants an adversary, nothing live.

* :class:`ServerView` — the honest-but-curious server: every message it received
  or sent (``Transcript.server_view()`` of a run, read back from
  ``RUN_DIR/transcript.npz``), organised by round: the models it sent down, the
  plaintext contributions it received (when the sum is not secure), who took part,
  the queries and replies.
* :class:`ReleaseView` — an outsider (or a device colluding with nobody): only the
  sequence of released models, i.e. what every participant downloads. Under
  central DP this is the view the guarantee is about; the server itself sees more.
* :class:`ModelLayout` — the public architecture: which coordinates of a flat
  parameter vector are the embedding rows of which field value.

The experimenter's ground truth (who holds which rows) is not a view; it comes from
:func:`secrelay.methods.prepare_data` and is used only to *score* attacks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from secrelay import RunConfig
from secrelay.data import Schema
from secrelay.federated import (
    AttributeReport,
    ContributionUpload,
    GradientReport,
    MaskedUpload,
    ModelDownload,
    QueryMessage,
    ReplyMessage,
    Transcript,
)
from secrelay.models import CTRModel, flat_parameter_slices, make_model

__all__ = ["ModelLayout", "ReleaseView", "ServerView"]


@dataclass(frozen=True)
class ModelLayout:
    """The public model architecture over a public feature schema.

    Parameters
    ----------
    name:
        Registered model name (``"dnn"``, ``"lr"``, ...).
    schema:
        The feature schema (fields, vocabularies): public, the server built the model.
    kwargs:
        Constructor keywords (``embedding_dim``, ``hidden_units``, ...).
    """

    name: str
    schema: Schema
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_config(cls, config: RunConfig, schema: Schema) -> ModelLayout:
        """The layout of a run's ``[model]`` over ``schema``."""
        kwargs = {"embedding_dim": config.model.embedding_dim, **config.model.options}
        return cls(config.model.name, schema, tuple(sorted(kwargs.items())))

    def build(self, *, seed: int | None = 0) -> CTRModel:
        """A fresh model of this architecture."""
        kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.kwargs}
        return make_model(self.name, self.schema, seed=seed, **kw)

    @cached_property
    def _tables(self) -> tuple[slice, ...]:
        vocab = self.schema.total_vocab
        out = []
        for name, sl in flat_parameter_slices(self.build()).items():
            size = sl.stop - sl.start
            if name.endswith("embedding.weight") and size % vocab == 0:
                out.append(sl)
        return tuple(out)

    @cached_property
    def num_parameters(self) -> int:
        return sum(s.stop - s.start for s in flat_parameter_slices(self.build()).values())

    def field_rows(self, flat: np.ndarray, field: str) -> np.ndarray:
        """The embedding rows of every value of ``field`` in a flat vector:
        ``(vocab_size, columns)``, all embedding tables side by side (row 0 = padding)."""
        vec = np.asarray(flat, dtype=np.float64).reshape(-1)
        vocab = self.schema.total_vocab
        start = self.schema.vocab_offsets()[self.schema.index(field)]
        size = self.schema[field].vocab_size
        blocks = [vec[sl].reshape(vocab, -1)[start : start + size] for sl in self._tables]
        if not blocks:
            raise ValueError(f"model {self.name!r} has no embedding table over the schema")
        return np.concatenate(blocks, axis=1)

    def row_norms(self, flat: np.ndarray, field: str) -> np.ndarray:
        """L2 norm of each value's embedding row(s) in ``flat``: ``(vocab_size,)``."""
        return np.asarray(np.linalg.norm(self.field_rows(flat, field), axis=1))

    def row_width(self, field: str) -> int:
        """Coordinates per value of ``field`` (all tables together)."""
        return int(self.field_rows(np.zeros(self.num_parameters), field).shape[1])


PACKED = "dp/packed"
"""The name under which user-level DP ships a device's clipped (rescaled) released
arrays concatenated (``secrelay.privacy``; FedAvg: exactly the clipped Δ)."""


def _slots(contribution: Mapping[str, np.ndarray], d: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The contribution's update as ``(slots, d)`` and its per-slot weights."""
    if "delta" in contribution:
        delta = np.asarray(contribution["delta"], dtype=np.float64)
        weight = np.asarray(contribution.get("weight", np.ones(1)), dtype=np.float64).reshape(-1)
        rows = delta.reshape(-1, delta.shape[-1]) if delta.ndim == 2 else delta.reshape(1, -1)
        if weight.size != rows.shape[0]:
            weight = np.full(rows.shape[0], weight.sum())
        return rows, weight
    if PACKED in contribution:
        packed = np.asarray(contribution[PACKED], dtype=np.float64).reshape(-1)
        k = packed.size // d if d else 0
        if k < 1:
            return None
        # clipped and uniformly weighted: the slots' weights are 1
        return packed[: k * d].reshape(k, d), np.ones(k)
    return None


def _contribution_update(contribution: Mapping[str, np.ndarray], d: int) -> np.ndarray | None:
    """A device's model update Δ_k from its contribution: ``delta / weight``, summed
    over cluster slots (a cluster-keyed contribution is zero outside one slot)."""
    got = _slots(contribution, d)
    if got is None:
        return None
    rows, w = got
    kept = [rows[i] / w[i] if w[i] > 0 else rows[i] for i in range(rows.shape[0])]
    return np.asarray(np.sum(kept, axis=0))


@dataclass(frozen=True)
class ReleaseView:
    """The released models only: ``models[round][key]`` is what devices of that round
    downloaded (round 1's download is the model before any device update)."""

    layout: ModelLayout
    models: Mapping[int, Mapping[str, np.ndarray]]

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(sorted(self.models))

    def aggregate_update(self, round: int, key: str = "global") -> np.ndarray | None:
        """The server's applied update of ``round``: w_{t+1} − w_t (``None`` when round
        t + 1's model was never released)."""
        if round not in self.models or round + 1 not in self.models:
            return None
        a, b = self.models[round].get(key), self.models[round + 1].get(key)
        if a is None or b is None:
            return None
        return np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)

    def aggregate_updates(self, round: int) -> dict[str, np.ndarray]:
        """Every model's applied update of ``round`` (one per cluster key)."""
        if round not in self.models or round + 1 not in self.models:
            return {}
        nxt = self.models[round + 1]
        return {
            k: np.asarray(nxt[k], dtype=np.float64) - np.asarray(v, dtype=np.float64)
            for k, v in self.models[round].items()
            if k in nxt
        }

    def last_model(self, key: str = "global") -> tuple[int, np.ndarray]:
        """The latest released model of ``key`` and its round."""
        for t in sorted(self.models, reverse=True):
            if key in self.models[t]:
                return t, np.asarray(self.models[t][key])
        raise KeyError(f"no released model {key!r}")


@dataclass(frozen=True)
class ServerView:
    """What the honest-but-curious server saw, from a transcript.

    Attributes
    ----------
    layout:
        The public model architecture.
    downloads:
        ``round -> {key: flat model}`` sent to devices that round (the first device's
        download; every device of a round gets the same models).
    sampled:
        ``round -> devices`` that were sent a model.
    uploads:
        ``(round, device) -> contribution``: the plaintext contributions (empty when the
        sum is secure).
    participants:
        ``round -> devices`` whose contribution entered the sum (plaintext uploaders,
        or the devices that sent a SecAgg+ masked input).
    secure:
        Whether the sums ran through secure aggregation (masked uploads seen).
    queries, replies, attributes, gradients:
        The other flows, in delivery order.
    """

    layout: ModelLayout
    downloads: Mapping[int, Mapping[str, np.ndarray]]
    sampled: Mapping[int, tuple[int, ...]]
    uploads: Mapping[tuple[int, int], Mapping[str, np.ndarray]]
    participants: Mapping[int, tuple[int, ...]]
    secure: bool
    queries: tuple[QueryMessage, ...] = ()
    replies: tuple[ReplyMessage, ...] = ()
    attributes: tuple[AttributeReport, ...] = ()
    gradients: tuple[GradientReport, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_transcript(cls, transcript: Transcript, layout: ModelLayout) -> ServerView:
        """Organise ``transcript.server_view()`` by round."""
        downloads: dict[int, dict[str, np.ndarray]] = {}
        sampled: dict[int, list[int]] = {}
        uploads: dict[tuple[int, int], Mapping[str, np.ndarray]] = {}
        participants: dict[int, set[int]] = {}
        masked_stages: dict[int, dict[str, set[int]]] = {}
        queries, replies, attrs, grads = [], [], [], []
        for m in transcript.server_view():
            if isinstance(m, ModelDownload):
                if m.models and m.round not in downloads:
                    downloads[m.round] = dict(m.models)
                sampled.setdefault(m.round, []).append(m.receiver)
            elif isinstance(m, ContributionUpload):
                uploads[(m.round, m.sender)] = m.contribution
                participants.setdefault(m.round, set()).add(m.sender)
            elif isinstance(m, MaskedUpload):
                masked_stages.setdefault(m.round, {}).setdefault(m.stage, set()).add(m.sender)
            elif isinstance(m, QueryMessage):
                queries.append(m)
            elif isinstance(m, ReplyMessage):
                replies.append(m)
            elif isinstance(m, AttributeReport):
                attrs.append(m)
            elif isinstance(m, GradientReport):
                grads.append(m)
        for t, stages in masked_stages.items():
            # the devices whose masked input the server received are the survivors
            who = stages.get("masked_input") or set().union(*stages.values())
            participants.setdefault(t, set()).update(who)
        return cls(
            layout=layout,
            downloads=downloads,
            sampled={t: tuple(sorted(set(d))) for t, d in sampled.items()},
            uploads=uploads,
            participants={t: tuple(sorted(d)) for t, d in participants.items()},
            secure=bool(masked_stages),
            queries=tuple(queries),
            replies=tuple(replies),
            attributes=tuple(attrs),
            gradients=tuple(grads),
        )

    @classmethod
    def from_run(cls, run_dir: str | Path, schema: Schema) -> ServerView:
        """The server view of a finished run (it needs ``run.record_transcript``)."""
        rd = Path(run_dir)
        path = rd / "transcript.npz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} does not exist: run with [run] record_transcript = true"
            )
        config = RunConfig.from_dict(json.loads((rd / "config.json").read_text()))
        return cls.from_transcript(Transcript.load(path), ModelLayout.from_config(config, schema))

    # --- derived views ----------------------------------------------------------------
    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.downloads) | set(self.participants)))

    def release_view(self) -> ReleaseView:
        """Only the released models (what any participant or outsider sees)."""
        return ReleaseView(self.layout, self.downloads)

    def device_update(self, round: int, device: int) -> np.ndarray | None:
        """Δ_k of ``device`` in ``round`` from its plaintext contribution, if the server
        received one."""
        contrib = self.uploads.get((round, device))
        if contrib is None:
            return None
        return _contribution_update(contrib, self.layout.num_parameters)

    def device_model(self, round: int, device: int) -> np.ndarray | None:
        """The device's locally trained model w_t + Δ_k, rebuilt from the model it
        downloaded and its plaintext update (``None`` under secure aggregation)."""
        upd = self.device_update(round, device)
        if upd is None or round not in self.downloads:
            return None
        key = self.device_key(round, device)
        if key is None:
            return None
        return np.asarray(np.asarray(self.downloads[round][key], dtype=np.float64) + upd)

    def device_key(self, round: int, device: int) -> str | None:
        """Which downloaded model a plaintext contribution updated (a cluster-keyed
        contribution reveals its slot; single-model strategies have one key)."""
        keys = list(self.downloads.get(round, {}))
        contrib = self.uploads.get((round, device))
        if not keys or contrib is None:
            return None
        if len(keys) == 1:
            return keys[0]
        got = _slots(contrib, self.layout.num_parameters)
        if got is not None and got[0].shape[0] == len(keys):
            return keys[int(np.argmax(np.abs(got[0]).sum(axis=1)))]
        return None

    def device_rounds(self) -> dict[int, tuple[int, ...]]:
        """``device -> rounds`` it took part in (its contribution entered the sum)."""
        out: dict[int, list[int]] = {}
        for t, devs in sorted(self.participants.items()):
            for d in devs:
                out.setdefault(d, []).append(t)
        return {d: tuple(ts) for d, ts in out.items()}
