"""`python -m streamchat.offline`: run the offline demo model on its own, for any OpenAI client."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from streamchat.offline.faults import FaultSyntaxError
from streamchat.offline.server import MODEL_ID, OfflineServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streamchat.offline",
        description="Serve streamchat's offline demo model (OpenAI-compatible) on this machine.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--tps", type=float, default=30.0, help="tokens per second (default 30)")
    parser.add_argument(
        "--ttft-ms", type=float, default=300.0, help="delay before the first token (default 300)"
    )
    parser.add_argument("--fault", help='inject a fault into every answer, e.g. "drop after=20"')
    parser.add_argument("--api-key", help="require this bearer key (default: none)")
    args = parser.parse_args(argv)
    if args.tps <= 0:
        parser.error("--tps must be positive")
    try:
        server = OfflineServer(
            host=args.host,
            port=args.port,
            tokens_per_second=args.tps,
            first_token_delay_ms=args.ttft_ms,
            default_fault=args.fault,
            api_key=args.api_key,
        )
        base_url = server.start()
    except FaultSyntaxError as exc:
        parser.error(f"--fault: {exc}")
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"offline demo model at {base_url} (model {MODEL_ID!r}); Ctrl+C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
