"""The built-in offline demo model: a real OpenAI-compatible HTTP/SSE server on loopback that
streams scripted lessons about streaming and injects faults on request."""

from streamchat.offline.lessons import choose_answer
from streamchat.offline.server import MODEL_ID, OfflineServer, RequestLog, RequestRecord

__all__ = ["MODEL_ID", "OfflineServer", "RequestLog", "RequestRecord", "choose_answer"]
