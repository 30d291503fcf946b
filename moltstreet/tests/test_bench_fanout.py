"""The fan-out benchmark (bench/fanout.py, bench/README.md section 3) runs to its end.

Its client processes hand their results, every latency sample among them, back to the parent through a
``multiprocessing`` pipe: at 500 spectators and 50 trades/s that is megabytes per process, far beyond the socket's
buffer, and a pipe the event loop had made non-blocking failed half-way (issue 17: ``BlockingIOError`` [Errno 11] in
every client process, then "got end of file during message" in the parent). Two tests:

* the client processes themselves (``fanout.client_process``, both websocket clients, under uvloop as the benchmark
  runs them) against a small websocket server of this test that sends each spectator a snapshot and thousands of
  trades at once, so that each process's result is more than twice the pipe's send buffer; no database, seconds;
* the benchmark itself, small (40 spectators over 2 client processes, 3 s), as a reader runs it: its own database
  (this run's test database name + ``_fanout``, recreated and dropped), daphne, the load, the summary, the audit.
"""

# ruff: noqa: S603  (the subprocess is this repository's own benchmark)
from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import multiprocessing
import socket
import subprocess
import sys
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "bench"
if str(BENCH) not in sys.path:  # bench/ is a directory of scripts, importing each other as top-level modules
    sys.path.insert(0, str(BENCH))

import fanout  # noqa: E402

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_FRAME = b"\x88\x02\x03\xe8"  # a server's close frame, code 1000


def _frame(text: str) -> bytes:
    """An unmasked server text frame."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 65536:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + payload


@contextmanager
def feed_server(trades: int) -> Iterator[int]:
    """A websocket server on 127.0.0.1 (its port yielded), in a thread of its own: every connection gets a
    ``snapshot`` at seq 0 and then ``trades`` trade messages, seqs 1 to ``trades``, all at once; a client's close
    frame is answered with one."""
    created_at = datetime.now(UTC).isoformat()
    snapshot = _frame(json.dumps({"type": "snapshot", "seq": 0, "reason": "connect"}))
    feed = snapshot + b"".join(
        _frame(json.dumps({"type": "trade", "seq": seq, "trade": {"id": str(seq), "created_at": created_at}}))
        for seq in range(1, trades + 1)
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    stop = loop.create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            headers = dict(
                line.split(b":", 1) for line in request.split(b"\r\n")[1:] if b":" in line
            )  # names as sent; RFC 6455 keys are case-insensitive
            key = next(value.strip() for name, value in headers.items() if name.strip().lower() == b"sec-websocket-key")
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())  # noqa: S324 (RFC 6455)
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + feed
            )
            await writer.drain()
            while data := await reader.read(65536):
                if data[0] & 0x0F == 8:  # the client's close frame (the clients send nothing else here)
                    writer.write(CLOSE_FRAME)
                    await writer.drain()
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop
        server.close()
        handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in handlers:  # connections the clients left open
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert started.wait(10), "the test's websocket server did not start"
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("client", ["raw", "websockets"])
def test_the_client_processes_hand_back_results_bigger_than_their_pipe_buffer(client):
    processes_count, spectators = 2, 4
    context = multiprocessing.get_context("spawn")
    probe, other = context.Pipe()
    with socket.socket(fileno=probe.fileno()) as sock:  # the pipe is a socketpair: its send buffer bounds one write
        send_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        sock.detach()
    probe.close()
    other.close()
    # Each process's result must be more than twice the send buffer: 8 bytes a sample, one sample a trade.
    trades = 2 * send_buffer // (8 * spectators) + 1
    with feed_server(trades) as port:
        pipes, processes = [], []
        for _ in range(processes_count):
            parent, child = context.Pipe()
            spec = {
                "count": spectators,
                "host": "127.0.0.1",
                "port": port,
                "path": "/ws/markets/test/",
                "client": client,
                "connect_concurrency": 4,
                "connect_timeout": 20,
            }
            process = context.Process(target=fanout.client_process, args=(child, spec), daemon=True)
            process.start()
            child.close()
            pipes.append(parent)
            processes.append(process)
        try:
            ready = fanout._receive_all(pipes, "ready", 30, processes)
            for conn in pipes:
                conn.send(("go",))
            for conn in pipes:
                conn.send(("final", trades, 20.0))
            results = fanout._receive_all(pipes, "result", 40, processes)
        finally:
            for process in processes:
                process.join(10)
                if process.is_alive():
                    process.terminate()
    assert [r["connected"] for r in ready] == [spectators] * processes_count, ready
    for result in results:
        assert len(result["latencies"]) > 2 * send_buffer, (len(result["latencies"]), send_buffer)
        latencies = array("d")
        latencies.frombytes(result["latencies"])
        assert len(latencies) == spectators * trades
        totals = result["totals"]
        assert (totals["received"], totals["trades"], totals["reached"]) == (
            spectators * trades,
            spectators * trades,
            spectators,
        ), totals
        assert totals["lost"] == totals["duplicates"] == totals["gaps"] == 0, totals
        assert result["drained"], result
    assert [p.exitcode for p in processes] == [0] * processes_count


@pytest.mark.multiprocess
def test_the_fanout_benchmark_runs_small_to_its_summary_and_a_clean_audit(settings):
    import psycopg

    from moltstreet import serving

    parts = urlsplit(serving.database_url())
    name = f"{parts.path.lstrip('/')}_fanout"
    database_url = parts._replace(path=f"/{name}").geturl()
    env = {
        **serving.server_env(),
        "BENCH_DATABASE_URL": database_url,
        "BENCH_REDIS_URL": settings.REDIS_URL,  # flushed by the benchmark, as the tests' cache fixture flushes it
    }
    argv = [
        sys.executable,
        str(BENCH / "fanout.py"),
        *("--spectators", "40", "--client-processes", "2", "--trades-per-second", "20", "--duration", "3"),
        *("--runs", "1", "--warmup", "0", "--drain-timeout", "20", "--connect-timeout", "20"),
    ]
    try:
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    finally:
        admin = parts._replace(path="/postgres").geturl()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "40 of 40 spectators connected" in run.stdout, output
    assert "== fan-out ==" in run.stdout, output
    assert "audit clean" in run.stdout, output
