"""``drivecap serve OUT_DIR``: the drive browser over a folder of recordings (read-only)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from drivecap.config import Config, ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="browse recorded drives in a web page: video with subtitles, captions, thumbnails",
        description="Serves the drives under OUT_DIR (each <name>.mp4 with its .vtt and .jsonl) as a web "
        "page. Binds 127.0.0.1 unless --bind says otherwise; any other address needs a token (a random one is "
        "printed inside the URL). Read-only. Ctrl-C stops.",
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder with replay/run outputs")
    p.add_argument("--bind", default="127.0.0.1:8080", metavar="[HOST:]PORT", help="default: 127.0.0.1:8080")
    p.add_argument("--token", help="the token to ask for (default: random when not on loopback)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, cfg: Config) -> int:
    from drivecap.web.auth import parse_bind, resolve_token
    from drivecap.web.server import WebServer

    root: Path = args.out_dir
    if not root.is_dir():
        raise ConfigError(f"OUT_DIR {root} is not a folder: give the --out folder of `drivecap replay`")
    host, port = parse_bind(args.bind)
    token = resolve_token(host, args.token)
    server = WebServer(host, port, token=token, root=root)
    # Ctrl-C / SIGTERM end the command. The handlers are installed, not inherited: a process started with
    # SIGINT ignored (a child of a parent that ignores it) would otherwise never stop on Ctrl-C. They are in
    # place before the URL is printed, so a Ctrl-C sent as soon as the URL shows is never lost.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with server:
        print(f"drive browser: {server.url}", flush=True)
        if server.lan_url:
            print(f"drive browser on the car's network: {server.lan_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0
