"""`python -m harness.proxy --host 127.0.0.1 --port 8474 [--seed N] [--config FILE]`"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from harness.proxy.errors import ApiError
from harness.proxy.server import LOOPBACK_HOSTS, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.proxy",
                                     description="Toxiproxy-compatible TCP fault proxy (API on loopback only)")
    parser.add_argument("--host", default="127.0.0.1", help="API address: 127.0.0.1 or localhost")
    parser.add_argument("--port", type=int, default=8474, help="API port (default 8474, as Toxiproxy)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for toxicity decisions, jitter and slicing (default: random, logged)")
    parser.add_argument("--config", type=Path, default=None,
                        help="JSON list of proxies to create at start (as POST /populate)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.host not in LOOPBACK_HOSTS:
        parser.error(f"--host {args.host}: only 127.0.0.1 or localhost (the harness binds to loopback only)")
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args.host, args.port, args.seed, args.config)
    except OSError as exc:
        logging.getLogger("harness.proxy").error("cannot serve on %s:%d: %s", args.host, args.port, exc)
        return 1
    except (ValueError, KeyError, ApiError) as exc:  # a bad --config file
        logging.getLogger("harness.proxy").error("--config %s: %s", args.config, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
