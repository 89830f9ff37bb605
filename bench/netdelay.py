"""A TCP proxy that delays what it forwards, for benchmarks over a "real network".

This machine's kernel has no ``netem`` qdisc, so the network's latency comes from here: every
chunk read from one side is written to the other ``--rtt-ms / 2`` after it arrived, in order,
in both directions - a round trip costs ``--rtt-ms`` more, while pipelining is left alone
(chunks in flight do not wait for each other: a reader thread stamps each chunk as it arrives,
a writer thread sends it when it is due). Threads, not asyncio: asyncio's timers wait on
``epoll`` in whole milliseconds, too coarse for a 0.25 ms one-way delay; ``time.sleep`` is
within ~0.1 ms. The added round trip actually seen is measured and printed by
``bench/network.py`` (a Redis PING through the proxy against one straight to Redis).

Each proxy counts the chunks it forwarded: the client-to-server count is the number of request
flights - round trips, pipelined commands sent together counting once.

    python bench/netdelay.py --listen 15432 --target 127.0.0.1:5432 --rtt-ms 0.5 \\
        --stats /tmp/pg-proxy.json

``SIGUSR1`` writes the counters to ``--stats`` (JSON); ``SIGUSR2`` cuts the link - every
chunk is read and held, nothing is delivered, no connection is closed, as a network partition
looks to both ends - and the next ``SIGUSR2`` heals it (what was held is delivered, in order);
``SIGTERM`` stops it. The chaos suite's partition scenarios use it with ``--rtt-ms 0``. Its own
CPU time is the process's, read from ``/proc`` by the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType

counts = {"requests": 0, "replies": 0, "connections": 0}
lock = threading.Lock()
#: set while the link is up; cleared while it is cut
link_up = threading.Event()
link_up.set()


def pump(source: socket.socket, sink: socket.socket, delay: float, up: bool) -> None:
    """Forward ``source`` to ``sink``, each chunk ``delay`` seconds after it arrived."""
    pending: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def deliver() -> None:
        while True:
            due, data = pending.get()
            if not data:
                break
            link_up.wait()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                sink.sendall(data)
            except OSError:
                break
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=deliver, daemon=True)
    writer.start()
    key = "requests" if up else "replies"
    try:
        while data := source.recv(65536):
            pending.put((time.monotonic() + delay, data))
            with lock:
                counts[key] += 1
    except OSError:
        pass
    pending.put((0.0, b""))
    writer.join()


def serve(listen: int, target: str, rtt_ms: float) -> None:
    host, port = target.rsplit(":", 1)
    delay = rtt_ms / 2000
    server = socket.create_server(("127.0.0.1", listen), reuse_port=False)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection((host, int(port)))
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            counts["connections"] += 1
        for source, sink, up in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(target=pump, args=(source, sink, delay, up), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--rtt-ms", type=float, required=True)
    parser.add_argument("--stats", type=Path)
    args = parser.parse_args()

    def dump(signum: int, frame: FrameType | None) -> None:
        if args.stats is not None:
            with lock:
                args.stats.write_text(json.dumps({**counts, "at": time.time()}))

    def toggle(signum: int, frame: FrameType | None) -> None:
        if link_up.is_set():
            link_up.clear()
        else:
            link_up.set()

    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGUSR2, toggle)
    serve(args.listen, args.target, args.rtt_ms)


if __name__ == "__main__":
    main()
