"""Logging set-up for the streamchat loggers: one line per event, never a secret."""

from __future__ import annotations

import logging

from streamchat.core.errors import redact_secrets


class _RedactingFilter(logging.Filter):
    """Last line of defence: scrub anything key-shaped from every record we emit."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_secrets(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Give the `streamchat` logger a handler and level (idempotent)."""
    logger = logging.getLogger("streamchat")
    logger.setLevel(level)
    if not any(getattr(h, "_streamchat", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler.addFilter(_RedactingFilter())
        handler._streamchat = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
