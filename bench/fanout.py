"""Event fan-out of the daemon: how many events per second reach 1 and 20 subscribed clients,
the latency from the moment an event is published to its receipt by a client, and what a
stalled client costs.

The daemon runs in this process (the real one: run_daemon, its hub, Unix socket and
WebSocket). A publisher task offers synthetic `tb_task_output` events to its hub at a target
rate, each carrying its sequence number and publish time; consecutive events belong to
different tasks, so none is coalesced: one event, one frame. Clients are separate processes
reading raw frames (NDJSON over the Unix socket, or WebSocket messages), as a foreign
client would, and report what they received. The clock is CLOCK_MONOTONIC, shared by the
processes of one machine.

Scenarios, one run, side by side:
  1 client  (Unix)            the baseline
  20 clients (Unix)           fan-out cost
  20 clients (Unix) + 1 stalled client (subscribes, never reads)
  20 clients (WebSocket)
Goal: 20 clients each receive a 5,000 events/s stream with p99 latency under 50 ms, and a
stalled client does not lower that. Figures only; nothing is asserted.

    .venv/bin/python bench/fanout.py [--rate 5000] [--seconds 4] [--clients 20]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.serving.hub import Hub  # noqa: E402
from daemon.serving.process import Daemon, Options, read_token, run_daemon  # noqa: E402
from protocol.events import ErrorEvent, TBTaskOutput  # noqa: E402

END = "bench-end"


# -- a client process ------------------------------------------------------------------------
def client_main(transport: str, address: str, token: str) -> None:
    """Subscribe, then record (seq, latency) of every bench event until END; print JSON."""
    latencies: list[int] = []
    seqs: list[int] = []
    first = last = 0

    def on_frame(text: str) -> bool:
        nonlocal first, last
        frame = json.loads(text)
        if frame.get("type") == "tb_task_output":
            now = time.monotonic_ns()
            first = first or now
            last = now
            for line in frame["text"].split("\n"):
                seq, sent = line.split()
                seqs.append(int(seq))
                latencies.append(now - int(sent))
        return frame.get("type") == "error" and frame.get("message") == END

    subscribe = '{"jsonrpc":"2.0","id":1,"method":"subscribe"}'
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        sock.sendall(subscribe.encode() + b"\n")
        print("subscribed", flush=True)
        buffer = b""
        done = False
        while not done:
            data = sock.recv(1 << 20)
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                done = on_frame(line.decode()) or done
    else:
        # A minimal WebSocket reader (handshake, then unmasked server frames), as light as
        # the NDJSON reader above, so that both measure the daemon rather than a library.
        host, port = address.removeprefix("ws://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n")
                     .encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += sock.recv(4096)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        mask = os.urandom(4)  # a client masks what it sends
        payload = subscribe.encode()
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
                     + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
        print("subscribed", flush=True)
        done = False
        while not done:
            data = sock.recv(1 << 20)
            if not data:
                break
            buffer += data
            at = 0  # frames are read in place; the rest is kept once per recv
            while len(buffer) - at >= 2:
                opcode, size, start = buffer[at] & 0x0F, buffer[at + 1] & 0x7F, at + 2
                if size == 126:
                    size, start = int.from_bytes(buffer[at + 2:at + 4], "big"), at + 4
                elif size == 127:
                    size, start = int.from_bytes(buffer[at + 2:at + 10], "big"), at + 10
                if len(buffer) < start + size:
                    break
                frame, at = buffer[start:start + size], start + size
                if opcode == 0x8:  # close: dropped by the daemon
                    done = True
                    break
                if opcode == 0x1:
                    done = on_frame(frame.decode()) or done
            buffer = buffer[at:]
    in_order = seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    print(json.dumps({"count": len(seqs), "first": first, "last": last,
                      "latencies": latencies, "in_order": in_order}), flush=True)


# -- the daemon side -------------------------------------------------------------------------
def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def publish(hub: Hub, rate: int, seconds: float) -> int:
    """Offer `rate` events per second for `seconds`, in small batches every millisecond."""
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            hub.publish(TBTaskOutput(run_id="bench", task_id=f"t{sent % 20}",
                                     text=f"{sent} {time.monotonic_ns()}", source="agent"))
            sent += 1
        await trio.sleep(0.001)
    hub.publish(ErrorEvent(message=END))
    return sent


def spawn_client(transport: str, address: str, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--client", transport, address, token],
                            stdout=subprocess.PIPE, text=True)


async def scenario(daemon: Daemon, name: str, clients: int, transport: str, rate: int,
                   seconds: float, stalled: bool = False) -> dict[str, Any]:
    hub = daemon.service.hub
    address = daemon.status.socket if transport == "unix" else str(daemon.status.url)
    procs = [spawn_client(transport, address, read_token()) for _ in range(clients)]
    stall = None
    if stalled:  # subscribes, then never reads: a small receive buffer, never drained
        stall = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stall.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stall.connect(daemon.status.socket)
        stall.sendall(b'{"jsonrpc":"2.0","id":1,"method":"subscribe"}\n')
    for proc in procs:  # each says when it has sent subscribe
        assert proc.stdout is not None
        await trio.to_thread.run_sync(proc.stdout.readline)
    wanted = clients + (1 if stalled else 0)
    while len(hub.subscribers) < wanted:  # the daemon has handled every subscribe
        await trio.sleep(0.01)
    rss_before = rss_mb()
    peak = rss_before
    stalled_queue = 0

    async def watch() -> None:
        nonlocal peak, stalled_queue
        while True:
            peak = max(peak, rss_mb())
            stalled_queue = max([stalled_queue] + [b.queued_bytes for b in hub.subscribers])
            await trio.sleep(0.1)

    dropped_before = hub.dropped
    cpu_before = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        sent = await publish(hub, rate, seconds)
        daemon_cpu = (time.process_time() - cpu_before) / seconds
        results = [json.loads((await trio.to_thread.run_sync(p.communicate))[0].splitlines()[-1])
                   for p in procs]
        nursery.cancel_scope.cancel()
    if stall is not None:
        stall.close()
    latencies = sorted(x for r in results for x in r["latencies"])
    per_client = [r["count"] / ((r["last"] - r["first"]) / 1e9 or 1) for r in results]
    return {
        "name": name, "clients": clients, "sent": sent, "rate": sent / seconds,
        "received": sum(r["count"] for r in results),
        "complete": all(r["count"] == sent for r in results),
        "in_order": all(r["in_order"] for r in results),
        "per_client_eps": statistics.median(per_client),
        "total_eps": sum(per_client),
        "p50_ms": latencies[len(latencies) // 2] / 1e6 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] / 1e6 if latencies else float("nan"),
        "max_ms": latencies[-1] / 1e6 if latencies else float("nan"),
        # peak over the run, any client
        "rss_growth_mb": peak - rss_before, "stalled_queue_kb": stalled_queue / 1024,
        "dropped": hub.dropped - dropped_before, "daemon_cpu": daemon_cpu,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tbhud-bench-") as home:
        os.environ["TBHUD_HOME"] = home
        async with trio.open_nursery() as nursery:
            # No Docker is needed: nothing runs; the engine is never asked.
            daemon: Daemon = await nursery.start(run_daemon, Options(listen="127.0.0.1:0"))
            n, rate, secs = args.clients, args.rate, args.seconds
            rows = [
                await scenario(daemon, "1 client, Unix", 1, "unix", rate, secs),
                await scenario(daemon, f"{n} clients, Unix", n, "unix", rate, secs),
                await scenario(daemon, f"{n} clients, Unix + 1 stalled", n, "unix", rate,
                               secs, stalled=True),
                await scenario(daemon, "1 client, WebSocket", 1, "ws", rate, secs),
                await scenario(daemon, f"{n} clients, WebSocket", n, "ws", rate, secs),
            ]
            nursery.cancel_scope.cancel()
    print(f"target {args.rate} events/s for {args.seconds:g} s per scenario; "
          f"{os.cpu_count()} CPUs; clients are separate processes\n")
    head = (f"{'scenario':34} {'sent/s':>7} {'recv/s per client':>17} {'all':>4} "
            f"{'order':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'RSS +MB':>7} "
            f"{'max queue KiB':>13} {'dropped':>7} {'daemon CPU':>10}")
    print(head)
    for r in rows:
        print(f"{r['name']:34} {r['rate']:7.0f} {r['per_client_eps']:17.0f} "
              f"{'yes' if r['complete'] else 'NO':>4} {'yes' if r['in_order'] else 'NO':>5} "
              f"{r['p50_ms']:7.2f} {r['p99_ms']:7.2f} {r['max_ms']:7.1f} "
              f"{r['rss_growth_mb']:7.1f} {r['stalled_queue_kb']:13.0f} {r['dropped']:7d} "
              f"{r['daemon_cpu']:10.0%}")
    one, many, stalled, _ws_one, ws_many = rows
    print(f"\nratios: per-client rate {many['clients']} vs 1 client (Unix): "
          f"{many['per_client_eps'] / one['per_client_eps']:.2f}; p99 {many['clients']} vs 1: "
          f"{many['p99_ms'] / one['p99_ms']:.2f}; p99 with a stalled client vs without: "
          f"{stalled['p99_ms'] / many['p99_ms']:.2f}; per-client rate WebSocket vs Unix "
          f"({many['clients']} clients): {ws_many['per_client_eps'] / many['per_client_eps']:.2f}")
    for r in (many, stalled, ws_many):
        ok = r["p99_ms"] < 50 and r["complete"]
        print(f"goal (each of {r['clients']} clients gets {args.rate} events/s, p99 < 50 ms) "
              f"with {r['name']}: {'met' if ok else 'NOT met'} on this machine")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(*sys.argv[2:5])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=20)
    trio.run(main, parser.parse_args())
