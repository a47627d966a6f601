"""Every flow a run had, and how it was protected — from evidence, not config flags.

The evidence, best first:

1. the saved transcript (``RUN_DIR/transcript.npz``, ``run.record_transcript = true``):
   every message the server received or sent (:meth:`Transcript.server_view`); a
   flow's protection is read from what the message carries (masked SecAgg bytes,
   CKKS ciphertexts, plaintext arrays) and from the ledger's records (the noise of a
   user-level DP sum, an LDP query's mechanism, the pool users' randomized samples);
2. without a transcript: the run's traffic counts per message kind (``summary.json``
   or the checkpoint), the round metrics that the HE layers write only when they ran
   (``he/selector_*``, ``he/matching_*``) and the ledger. Message kinds do not say
   which topic a query had, so those flows are named per method and counted together.

A flow's ``status`` is ``"protected"``, ``"plaintext"`` (its content reached the
server — or, for CoDA's batches, the receiving device — in the clear) or ``"public"``
(the server's own data, or public key material).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from protocols.dp import LedgerRecord
from protocols.errors import MessageError
from secrelay.federated.messages import (
    AttributeReport,
    ContributionUpload,
    GradientReport,
    MaskedUpload,
    Message,
    ModelDownload,
    QueryMessage,
    ReplyMessage,
)
from secrelay.federated.transcript import Transcript

__all__ = ["Flow", "FlowStatus", "flows_from_evidence"]

FlowStatus = Literal["protected", "plaintext", "public"]
Direction = Literal["up", "down"]


def _direction(d: str) -> Direction:
    return "up" if d == "up" else "down"


_CKKS = "CKKS (encrypted under the device's key; the server cannot decrypt)"
_PUBLIC = "public (the server's own data)"
_HE_CONTEXT = "public key material only (the secret key stays on the device)"

# topic -> (flow, content), per direction
_TOPICS: dict[tuple[str, str], tuple[str, str]] = {
    ("up", "relayrec/select"): ("selector query", "preference vector p_u"),
    ("down", "relayrec/select"): ("selector answer", "the selector's scores for p_u"),
    ("up", "relayrec/he_context"): ("HE public context", "CKKS public context"),
    ("down", "relayrec/he_layout"): ("HE layout", "encrypted selector's layout"),
    ("down", "relayrec/item_space"): ("item space download", "item embeddings, centroids"),
    ("down", "relayrec/selector"): ("selector download", "the selector's weights"),
    ("up", "coda/match"): ("CoDA match request", "user vector v_u"),
    ("up", "coda/he_context"): ("HE public context", "CKKS public context"),
    ("down", "coda/he_layout"): ("HE layout", "the pool's packing layout"),
    ("down", "coda/scores"): ("CoDA match scores", "v_u's similarity to each pool user"),
    ("up", "coda/pick"): ("CoDA pick", "positions of the K pool users picked"),
    ("down", "coda/batch"): ("CoDA batch fetch", "pool users' pre-regulation samples"),
    ("up", "lcft/correction_query"): ("LCFT correction query", "local CTR w_i"),
    ("down", "lcft/correction_query"): ("LCFT correction answer", "(α, β) for the report"),
    ("down", "lcft/correction_table"): ("LCFT correction table", "w_g and the table"),
}


@dataclass(frozen=True)
class Flow:
    """One kind of message that crossed the device/cloud boundary in the run.

    Attributes
    ----------
    name, direction, content:
        What the flow is (``"selector query"``, ``"up"``, ``"preference vector p_u"``).
    protection:
        How it was protected, as the evidence shows.
    status:
        :data:`FlowStatus`.
    messages:
        Messages of the flow (``None`` where traffic counts cannot split them).
    rounds:
        Rounds it occurred in (empty when only traffic counts were available).
    """

    name: str
    direction: Literal["up", "down"]
    content: str
    protection: str
    status: FlowStatus
    messages: int | None
    rounds: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "flow": self.name,
            "direction": self.direction,
            "content": self.content,
            "protection": self.protection,
            "status": self.status,
            "plaintext": self.status == "plaintext",
            "messages": self.messages,
            "rounds": list(self.rounds),
        }


@dataclass(frozen=True)
class _Ledger:
    """What the ledger says about the flows' DP."""

    central: bool
    distributed: bool
    query: str | None
    pool: tuple[float, int] | None

    @classmethod
    def of(cls, records: Sequence[LedgerRecord], pool: tuple[float, int] | None) -> _Ledger:
        user = [r for r in records if r.unit == "user"]
        query = sorted({r.mechanism for r in user if r.mechanism.startswith("lcft_query")})
        return cls(
            central=any("central_gaussian" in r.mechanism for r in user),
            distributed=any("distributed" in r.mechanism for r in user),
            query=", ".join(query) or None,
            pool=pool,
        )

    def update_protection(self, masked: bool) -> tuple[str, FlowStatus]:
        if masked:
            text = "secure aggregation (SecAgg+): the server learns only the survivors' sum"
            if self.distributed:
                text += ", with distributed discrete Gaussian noise (user-level DP)"
            return text, "protected"
        if self.central:
            return (
                "plaintext: clipped on the device; central DP noise is added by the server "
                "after it sees each update (the ε protects the released model, not the upload)",
                "plaintext",
            )
        return "plaintext", "plaintext"

    def batch_protection(self) -> tuple[str, FlowStatus]:
        if self.pool is not None:
            eps, n = self.pool
            return (
                f"randomized, ε per pool user (ids dropped; user fields by randomized "
                f"response; largest ε {eps:.3g} over {n} pool users)",
                "protected",
            )
        return "user id zeroed; the other user fields in the clear", "plaintext"

    def query_protection(self) -> tuple[str, FlowStatus]:
        if self.query:
            return f"ε-LDP ({self.query}; ε per device in the ledger)", "protected"
        return "plaintext", "plaintext"


def _classify(m: Message, lg: _Ledger) -> tuple[str, str, str, FlowStatus]:
    """(flow, content, protection, status) of one message."""
    if isinstance(m, ModelDownload):
        keys = sorted(m.models)
        clusters = [k for k in keys if k.startswith("cluster/")]
        if clusters:
            return (
                "model download",
                f"all {len(clusters)} cluster models",
                "public; every device downloads all K models, so its choice stays private",
                "public",
            )
        return "model download", "model(s) " + ", ".join(keys), _PUBLIC, "public"
    if isinstance(m, MaskedUpload):
        text, status = lg.update_protection(True)
        return "model update upload", "masked update sums (SecAgg+ messages)", text, status
    if isinstance(m, ContributionUpload):
        text, status = lg.update_protection(False)
        return (
            "model update upload",
            "update sums: " + ", ".join(sorted(m.contribution)),
            text,
            status,
        )
    if isinstance(m, AttributeReport):
        return "attribute report", ", ".join(sorted(m.attributes)), "plaintext", "plaintext"
    if isinstance(m, GradientReport):
        return "gradient report", "gradient", "plaintext", "plaintext"
    if isinstance(m, (QueryMessage, ReplyMessage)):
        name, content = _TOPICS.get((m.direction, m.topic), (f"{m.kind} {m.topic!r}", m.topic))
        encrypted = bool(m.blob) and not m.arrays
        if m.topic.endswith("/he_context"):
            return name, content, _HE_CONTEXT, "public"
        if m.topic == "coda/batch":
            return (name, content, *lg.batch_protection())
        if m.topic == "lcft/correction_query" and m.direction == "up":
            return (name, content, *lg.query_protection())
        if encrypted:
            return name, content, _CKKS, "protected"
        if m.direction == "up" or m.topic == "relayrec/select":
            note = {"coda/pick": " (reveals the device's neighbourhood)"}.get(m.topic, "")
            return name, content, "plaintext" + note, "plaintext"
        return name, content, _PUBLIC, "public"
    return f"{m.kind}", "", "plaintext", "plaintext"  # pragma: no cover - no other kinds


def _from_transcript(transcript: Transcript, lg: _Ledger) -> list[Flow]:
    groups: dict[tuple[str, Direction, str, str, FlowStatus], list[int]] = {}
    for m in transcript.server_view():
        name, content, protection, status = _classify(m, lg)
        groups.setdefault((name, m.direction, content, protection, status), []).append(m.round)
    return [
        Flow(name, direction, content, protection, status, len(rs), tuple(sorted(set(rs))))
        for (name, direction, content, protection, status), rs in groups.items()
    ]


def _he_ran(metrics: Iterable[Mapping[str, Any]], key: str) -> bool:
    return any((r.get(key) or 0) > 0 for r in metrics)


def _from_traffic(
    counts: Mapping[str, int], method: str, metrics: Sequence[Mapping[str, Any]], lg: _Ledger
) -> list[Flow]:
    out: list[Flow] = []
    st: FlowStatus
    selector_he = _he_ran(metrics, "he/selector_devices")
    matching_he = _he_ran(metrics, "he/matching_devices")
    for key, n in sorted(counts.items()):
        if not n:
            continue
        direction, kind = key.split(":", 1)
        if kind == "model_download":
            content = "all K cluster models" if method == "relayrec" else "model(s)"
            protection = (
                "public; every device downloads all K models, so its choice stays private"
                if method == "relayrec"
                else _PUBLIC
            )
            out.append(Flow("model download", "down", content, protection, "public", n))
        elif kind in ("masked_upload", "contribution_upload"):
            text, status = lg.update_protection(kind == "masked_upload")
            out.append(Flow("model update upload", "up", "update sums", text, status, n))
        elif kind in ("attribute_report", "gradient_report"):
            out.append(Flow(kind.replace("_", " "), "up", kind, "plaintext", "plaintext", n))
        elif kind == "query" and method == "relayrec":
            prot, st = (_CKKS, "protected") if selector_he else ("plaintext", "plaintext")
            out.append(Flow("selector query", "up", f"p_u ({n} query messages)", prot, st, None))
        elif kind == "query" and method == "coda":
            if matching_he:
                out.append(
                    Flow("CoDA match request", "up", "user vector v_u", _CKKS, "protected", None)
                )
                out.append(
                    Flow(
                        "CoDA pick",
                        "up",
                        "positions of the K pool users picked",
                        "plaintext (reveals the device's neighbourhood)",
                        "plaintext",
                        None,
                    )
                )
            else:
                out.append(
                    Flow("CoDA match request", "up", "user vector v_u", "plaintext", "plaintext", n)
                )
        elif kind == "query" and method == "lcft":
            out.append(
                Flow("LCFT correction query", "up", "local CTR w_i", *lg.query_protection(), n)
            )
        elif kind == "reply" and method == "coda":
            what = "pool users' samples" + (" (and the HE replies)" if matching_he else "")
            count = None if matching_he else n  # with HE, the replies hold the scores too
            out.append(Flow("CoDA batch fetch", "down", what, *lg.batch_protection(), count))
        elif kind == "reply" and method == "relayrec" and not selector_he:
            out.append(Flow("selector answer", "down", "the selector's scores for p_u "
                            f"(and the item space; {n} replies)", "plaintext", "plaintext", None))  # fmt: skip
        elif kind == "reply":
            prot = _CKKS if method == "relayrec" else _PUBLIC
            st = "protected" if method == "relayrec" else "public"
            out.append(Flow("replies", "down", f"{n} server replies", prot, st, n))
        else:
            out.append(Flow(kind, _direction(direction), kind, "unknown", "plaintext", n))
    return out


def flows_from_evidence(
    run_dir: Path,
    *,
    method: str,
    metrics: Sequence[Mapping[str, Any]],
    records: Sequence[LedgerRecord],
    pool: tuple[float, int] | None,
    checkpoint: Mapping[str, Any] | None,
) -> tuple[list[Flow], str, str]:
    """The run's flows, a sentence saying which evidence they come from, and that
    evidence in a word (``"transcript"``, ``"traffic counts"`` or ``"none"``)."""
    lg = _Ledger.of(records, pool)
    path = run_dir / "transcript.npz"
    if path.is_file():
        try:
            transcript = Transcript.load(path)
        except (MessageError, OSError, ValueError, KeyError) as e:
            from secrelay.auditing.evidence import AuditError

            raise AuditError(f"the transcript {str(path)!r} is unreadable: {e}") from None
        return (
            _from_transcript(transcript, lg),
            "the saved transcript (transcript.npz: every message the server received or "
            "sent) and the privacy ledger",
            "transcript",
        )
    traffic, source = None, ""
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            traffic = json.loads(summary.read_text(encoding="utf-8")).get("traffic")
            source = "summary.json"
        except (ValueError, AttributeError):
            traffic = None
    if traffic is None and checkpoint is not None:
        traffic = (checkpoint.get("usage") or {}).get("traffic")
        source = "the checkpoint"
    if not traffic or not traffic.get("count"):
        return (
            [],
            "none: no saved transcript (run.record_transcript = false) and no traffic "
            "counts; the flows cannot be listed",
            "none",
        )
    return (
        _from_traffic(traffic["count"], method, metrics, lg),
        f"no saved transcript (run.record_transcript = false): the traffic counts per "
        f"message kind in {source}, the round metrics (he/* keys, written only when HE "
        "ran) and the privacy ledger",
        "traffic counts",
    )
