"""The federated runtime: devices and the server talk only through typed messages on
a channel that records each one in a transcript (``docs/federated.md``).

The names exported here are the *attack surface* ``attacks/`` may read: the message
types and the :class:`Transcript` (``Transcript.load(RUN_DIR / "transcript.npz")``
then ``server_view()``). Both modules import nothing heavier than numpy. The round
loop, strategies, executors and sum protocols are imported from their modules.
"""

from secrelay.federated.messages import (
    SERVER,
    AttributeReport,
    ContributionUpload,
    GradientReport,
    MaskedUpload,
    Message,
    ModelDownload,
    QueryMessage,
    ReplyMessage,
)
from secrelay.federated.transcript import Transcript, TranscriptEntry

__all__ = [
    "SERVER",
    "AttributeReport",
    "ContributionUpload",
    "GradientReport",
    "MaskedUpload",
    "Message",
    "ModelDownload",
    "QueryMessage",
    "ReplyMessage",
    "Transcript",
    "TranscriptEntry",
]
