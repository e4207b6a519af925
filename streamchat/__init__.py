"""streamchat: stream LLM answers token by token, with guardrails on the stream."""

__version__ = "0.1.0"
