"""``--serve [HOST:]PORT`` and ``--token`` for ``run`` and ``replay``: the live page beside the pipeline.

Nothing web-related is imported unless ``--serve`` was given (the runtime-imports test checks that).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--serve",
        metavar="[HOST:]PORT",
        help="show the live video and captions in a web page on this port (127.0.0.1 unless HOST says "
        "otherwise; any other address needs the token printed in the URL)",
    )
    p.add_argument("--token", help="with --serve: the token to ask for (default: random off loopback)")


@contextlib.contextmanager
def live_server(args: argparse.Namespace, metrics: Any) -> Iterator[Any]:
    """The feed the pipeline hands frames to (None without ``--serve``); the server runs while inside."""
    if not getattr(args, "serve", None):
        if getattr(args, "token", None):
            from drivecap.errors import ConfigError

            raise ConfigError("--token is for --serve: add --serve [HOST:]PORT")
        yield None
        return
    from drivecap.web.server import start_live_server

    feed, server = start_live_server(args.serve, args.token, metrics)
    try:
        print(f"live view: {server.url}", flush=True)
        if server.lan_url:
            print(f"live view on the car's network: {server.lan_url}", flush=True)
        yield feed
    finally:
        server.stop()
