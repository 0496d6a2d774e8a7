"""Socket-level fuzz of a running gateway: many connections send random, truncated, oversized,
binary, invalid UTF-8, fragmented, protocol-violating and malformed frames, while a few well-behaved
"sentinel" clients keep pinging and finally ask a question each.

What must hold (``FuzzReport.problems`` lists what did not): the gateway process stays up and its
log has no unhandled failure; no client ever gets ``INTERNAL`` or a 1011 close; oversized frames
get ``PAYLOAD_TOO_LARGE`` and 1009; the sentinels are never disconnected, their pings are answered
promptly and their questions answered in full; the gateway's RSS returns to its baseline.

Run against a cluster of its own (temporary vhost and database on the local services):

    uv run python -m tests.gateway.fuzz_gateway --frames 20000 --concurrency 40

``tests/gateway/test_fuzz.py`` runs it at a small scale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import string
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.protocol import State

from tests.support import rawws
from tests.support.client import ChatClient, make_token
from tests.support.wait import eventually

FRAME_TYPES = ["join_chat", "switch_chat", "create_chat", "send_message", "cancel", "refresh_token", "ping"]


@dataclass
class FuzzReport:
    connections: Counter[str] = field(default_factory=Counter)
    frames: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    sentinel_pings: int = 0
    sentinel_max_pong_ms: float = 0.0
    sentinel_answers: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)
    """the gateway's resident memory: ``baseline`` after the warm-up, ``peak`` and ``final`` (MB)."""
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "connections": dict(self.connections),
            "frames_sent": sum(self.frames.values()),
            "frames_by_kind": dict(self.frames),
            "server_error_codes": dict(self.errors),
            "server_close_codes": {str(k): v for k, v in self.closes.items()},
            "sentinel_pings": self.sentinel_pings,
            "sentinel_max_pong_ms": round(self.sentinel_max_pong_ms, 1),
            "sentinel_answers": self.sentinel_answers,
            "rss_mb": self.rss_mb,
            "problems": self.problems,
        }


class Fuzzer:
    def __init__(self, ws_url: str, *, max_payload: int, seed: int, report: FuzzReport) -> None:
        self.ws_url = ws_url
        self.host, port = ws_url.split("//")[1].split("/")[0].split(":")
        self.port = int(port)
        self.max_payload = max_payload
        self.rng = random.Random(seed)
        self.report = report
        self.budget = 0

    # ------------------------------------------------------------------ frames

    def _text(self, size: int) -> str:
        alphabet = string.printable + "éßДж中文🙂\u0301\u200b\x00\x07\x1b\ud7ff"
        return "".join(self.rng.choice(alphabet) for _ in range(size))

    def _json_value(self, depth: int = 0) -> Any:
        rng = self.rng
        pick = rng.randrange(9 if depth < 3 else 6)
        if pick == 0:
            return None
        if pick == 1:
            return rng.choice([True, False])
        if pick == 2:
            return rng.choice([0, -1, 2**31, 2**63, -(2**64), rng.randrange(-(10**6), 10**6)])
        if pick == 3:
            return rng.choice([0.5, -1e308, 1e-300, 3.14])
        if pick == 4:
            return self._text(rng.randrange(0, 40))
        if pick == 5:
            return rng.choice([*FRAME_TYPES, "documents", "messages", "", "x" * 200])
        if pick == 6:
            return [self._json_value(depth + 1) for _ in range(rng.randrange(0, 4))]
        keys = ["token", "chatType", "chatId", "content", "messageId", "lastSeq", "requestId", "type", "data"]
        return {rng.choice(keys): self._json_value(depth + 1) for _ in range(rng.randrange(0, 5))}

    def _plausible(self, token: str) -> dict[str, Any]:
        rng = self.rng
        kind = rng.choice(FRAME_TYPES)
        data: dict[str, Any] = {}
        if kind == "join_chat":
            data = {"token": rng.choice([token, "forged.token.x", ""]), "chatType": rng.choice(["messages", "x"])}
        elif kind in ("switch_chat", "create_chat"):
            data = {"chatType": rng.choice(["messages", "documents", 5])}
            if kind == "switch_chat":
                data["chatId"] = rng.choice([self._text(8), "00000000-0000-0000-0000-000000000000", "' OR 1=1 --"])
        elif kind == "send_message":
            data = {"content": self._text(rng.randrange(0, 120))}
            if rng.random() < 0.2:
                data["chatId"] = self._text(10)
        elif kind == "cancel" and rng.random() < 0.5:
            data = {"messageId": self._text(12)}
        elif kind == "refresh_token":
            data = {"token": rng.choice([token, "nope"])}
        frame: dict[str, Any] = {"type": kind, "data": data}
        if rng.random() < 0.5:
            frame["requestId"] = rng.choice([self._text(10), rng.randrange(10**9), 2**70, None, [1]])
        if rng.random() < 0.3:
            frame[rng.choice(["data", "type", "extra"])] = self._json_value()
        return frame

    def next_frame(self, token: str) -> tuple[str, Any]:
        """(kind, payload) where payload is str, bytes, ("utf8", bytes), ("fragments", list) or ("raw", bytes)."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.30:
            return "plausible", json.dumps(self._plausible(token))
        if roll < 0.42:
            return "random_json", json.dumps(self._json_value())
        if roll < 0.54:
            whole = json.dumps(self._plausible(token))
            return "truncated", whole[: rng.randrange(0, max(1, len(whole)))]
        if roll < 0.62:
            return "random_text", self._text(rng.randrange(0, 300))
        if roll < 0.70:
            return "binary", rng.randbytes(rng.randrange(0, 400))
        if roll < 0.74:
            depth = rng.randrange(100, 6000)
            return "deep_nesting", "[" * depth + "]" * rng.choice([depth, 0])
        if roll < 0.79:
            return "oversized", ("o" * (self.max_payload + rng.randrange(1, 50_000)))
        if roll < 0.83:
            fragments = [self._text(rng.randrange(1, 60)) for _ in range(rng.randrange(2, 6))]
            return "fragmented", ("fragments", fragments)
        if roll < 0.86:
            bad = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80"])
            return "invalid_utf8", ("utf8", b'{"type":"ping","x":"' + bad + b'"}')
        if roll < 0.90:
            return "protocol_violation", ("raw", self._violation())
        return "ping", json.dumps({"type": "ping", "requestId": rng.randrange(1000)})

    def _violation(self) -> bytes:
        rng = self.rng
        mask = rng.randbytes(4)
        choice = rng.randrange(5)
        if choice == 0:  # unmasked client frame
            return b"\x81\x05hello"
        if choice == 1:  # reserved opcode
            return bytes([0x80 | 0x3, 0x80 | 1]) + mask + b"x"
        if choice == 2:  # control frame with a 200-byte payload
            return bytes([0x89, 0x80 | 126]) + struct.pack("!H", 200) + mask + b"p" * 200
        if choice == 3:  # continuation without a start
            return bytes([0x80, 0x80 | 1]) + mask + b"x"
        # a header announcing a payload that never comes, then the connection drops
        return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 1000) + mask + b"partial"

    # ------------------------------------------------------------------ connections

    async def attacker(self, deadline: float) -> None:
        while self.budget > 0 and time.monotonic() < deadline:
            roll = self.rng.random()
            try:
                if roll < 0.05:
                    await self.raw_tcp()
                else:
                    await self.ws_connection(authenticate=roll < 0.65)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.report.connections[f"failed_{type(exc).__name__}"] += 1

    async def raw_tcp(self) -> None:
        """Not a WebSocket at all: garbage, a truncated handshake, or a handshake then garbage."""
        self.report.connections["raw_tcp"] += 1
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            choice = self.rng.randrange(3)
            if choice == 0:
                writer.write(self.rng.randbytes(self.rng.randrange(1, 2000)))
            elif choice == 1:
                writer.write(b"GET /ws/chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            else:
                writer.write(b"GET /ws/chat HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            self.budget -= 1
            self.report.frames["raw_tcp"] += 1
            await writer.drain()
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(4096), 0.2)
        finally:
            writer.transport.abort()

    async def ws_connection(self, *, authenticate: bool) -> None:
        rng = self.rng
        user = f"fuzz-{rng.randrange(10**9)}"
        token = make_token(user, expires_in=rng.choice([600, 600, 1]))
        ws = await websockets.connect(self.ws_url, compression=None, max_size=2**22, open_timeout=10)
        self.report.connections["authenticated" if authenticate else "unauthenticated"] += 1
        reader = asyncio.create_task(self._read(ws))
        try:
            if authenticate:
                await ws.send(json.dumps({"type": "join_chat", "data": {"token": token, "chatType": "messages"}}))
            for _ in range(rng.randrange(1, 25)):
                if self.budget <= 0 or reader.done():
                    break
                kind, payload = self.next_frame(token)
                if not await self._send(ws, kind, payload):
                    break
                if rng.random() < 0.3:
                    await asyncio.sleep(rng.random() * 0.01)  # the attacker's random pace (the fuzz itself)
            ending = rng.random()
            if reader.done():
                pass
            elif ending < 0.6:
                await ws.close()
            elif ending < 0.8:
                ws.transport.abort()
            else:  # linger: the server may close first (auth deadline), else we do
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 0.3)
                await ws.close()
            await asyncio.wait_for(reader, 15)
        finally:
            if not reader.done():
                reader.cancel()
                self.report.problems.append("a connection did not end within 15 s of closing it")
            ws.transport.abort()

    async def _send(self, ws: Any, kind: str, payload: Any) -> bool:
        try:
            if isinstance(payload, tuple) and payload[0] == "raw":
                # The server may have closed on us (websockets then half-closes the TCP side with
                # write_eof): a peer that closed first is an outcome of fuzzing, not a harness error.
                if ws.protocol.state is not State.OPEN or ws.transport.is_closing():
                    return False
                try:
                    ws.transport.write(payload[1])
                except (RuntimeError, ConnectionError):
                    return False
                if self.rng.random() < 0.5:
                    ws.transport.abort()
            elif isinstance(payload, tuple) and payload[0] == "utf8":
                await ws.send(payload[1], text=True)
            elif isinstance(payload, tuple):
                await ws.send(payload[1])
            else:
                await ws.send(payload)
        except ConnectionClosed:
            return False
        self.budget -= 1
        self.report.frames[kind] += 1
        return kind not in ("oversized", "invalid_utf8", "protocol_violation")

    async def _read(self, ws: Any) -> None:
        codes: list[str] = []
        try:
            async for raw in ws:
                try:
                    frame = json.loads(raw)
                except (TypeError, ValueError):
                    self.report.problems.append(f"server sent a non-JSON frame: {raw[:80]!r}")
                    continue
                if frame.get("type") == "error":
                    code = frame["data"]["code"]
                    codes.append(code)
                    self.report.errors[code] += 1
                    if code == "INTERNAL":
                        self.report.problems.append(f"INTERNAL error: {frame['data'].get('message')}")
        except ConnectionClosed:
            pass
        received = ws.protocol.close_rcvd
        if received is not None:
            self.report.closes[received.code] += 1
            if received.code == 1011:
                self.report.problems.append(f"server closed with 1011: {received.reason}")
            for close_code, error_code in ((1009, "PAYLOAD_TOO_LARGE"), (1007, "INVALID_MESSAGE")):
                if received.code == close_code and (received.reason != error_code or error_code not in codes[-1:]):
                    self.report.problems.append(f"{close_code} without {error_code}: {received.reason!r} {codes[-3:]}")

    # ------------------------------------------------------------------ sentinels

    async def sentinel(self, index: int, stop: asyncio.Event) -> None:
        client = await ChatClient.connect(self.ws_url)
        joined = await client.join(make_token(f"fuzz-sentinel-{index}-{os.getpid()}-{time.time_ns()}"))
        if joined["type"] != "chat_joined":
            self.report.problems.append(f"sentinel {index} could not join: {joined}")
            return
        try:
            while not stop.is_set():
                sent = time.monotonic()
                await client.send("ping", requestId=f"s{index}")
                pong = await client.recv_type("pong", timeout=5)
                assert pong["requestId"] == f"s{index}"
                self.report.sentinel_pings += 1
                pong_ms = (time.monotonic() - sent) * 1000
                self.report.sentinel_max_pong_ms = max(self.report.sentinel_max_pong_ms, pong_ms)
                await asyncio.sleep(0.05)  # the sentinel's ping rate: it measures, nothing waits on it
            answer = await client.ask(f"sentinel {index}: is the contract valid?", timeout=30)
            if answer.end is None or f"sentinel {index}" not in answer.end["content"]:
                self.report.problems.append(f"sentinel {index} got no full answer: {answer.error}")
            else:
                self.report.sentinel_answers += 1
        except (ConnectionClosed, TimeoutError, AssertionError) as exc:
            self.report.problems.append(f"sentinel {index} disturbed: {exc!r}")
        finally:
            await client.close()


async def fuzz(
    ws_url: str,
    pid: int,
    *,
    frames: int,
    concurrency: int,
    sentinels: int = 3,
    max_payload: int = 16384,
    seconds: float = 120,
    seed: int = 1,
    log_path: Path | None = None,
) -> FuzzReport:
    """Warm up with a tenth of the frames, take the RSS baseline, fuzz, then wait for RSS to settle."""
    report = FuzzReport()
    fuzzer = Fuzzer(ws_url, max_payload=max_payload, seed=seed, report=report)
    start = time.monotonic()
    deadline = start + seconds

    async def round_of(count: int) -> None:
        fuzzer.budget = count
        await asyncio.gather(*(fuzzer.attacker(deadline) for _ in range(concurrency)))

    others = set(rawws.held_ports(pid, fuzzer.port))  # sockets that are not the fuzzer's
    await round_of(max(100, frames // 10))  # warm-up: first-use allocations are not a leak
    # the baseline once the gateway has let go of every warm-up socket
    await eventually(
        lambda: not set(rawws.held_ports(pid, fuzzer.port)) - others, timeout=10, what="the warm-up's sockets closed"
    )
    memory = rawws.RssPeak(pid, every=0.2)
    report.frames.clear()
    report.connections.clear()

    stop = asyncio.Event()
    watchers = [asyncio.create_task(fuzzer.sentinel(i, stop)) for i in range(sentinels)]
    sampler = asyncio.create_task(memory.run())
    await round_of(frames)
    stop.set()
    await asyncio.gather(*watchers)
    sampler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
    if time.monotonic() > deadline:
        report.problems.append(f"the run hit its time bound of {seconds} s")

    # memory back to baseline: allow 10 % or 8 MB for allocator slack, wait for it a few seconds
    allowed = memory.baseline + max(8 * 2**20, memory.baseline // 10)
    with contextlib.suppress(AssertionError):  # judged just below, as a problem of the report
        await eventually(lambda: rawws.rss_bytes(pid), timeout=10, interval=0.5, accept=lambda rss: rss <= allowed)
    final = rawws.rss_bytes(pid)
    report.rss_mb = {
        name: round(value / 2**20, 1)
        for name, value in (("baseline", memory.baseline), ("peak", memory.peak), ("final", final))
    }
    if final > allowed:
        report.problems.append(f"RSS did not return to baseline: {final / 2**20:.1f} MB > {allowed / 2**20:.1f} MB")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        report.problems.append("the gateway process died")
    if log_path is not None:
        log = log_path.read_text(errors="replace")
        for marker in ("unexpected failure", "Exception in ASGI application", "Traceback"):
            at = log.find(marker)
            if at >= 0:
                excerpt = log[max(0, at - 200) : at + 2500]
                report.problems.append(f"gateway log contains {marker!r}:\n{excerpt}")
    if report.sentinel_answers != sentinels:
        report.problems.append(f"{sentinels - report.sentinel_answers} sentinel(s) without an answer")
    report.seconds = time.monotonic() - start
    return report


FUZZ_GATEWAY_ENV: dict[str, str | int] = {"WS_AUTH_TIMEOUT": 2000}


async def _standalone(args: argparse.Namespace) -> FuzzReport:
    from tests.support.cluster import isolated_cluster
    from tests.support.services import session_services

    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    async with session_services(redis=False) as services, isolated_cluster(services, log_dir) as cluster:
        await cluster.fake_openai(FAKE_OPENAI_FIRST_TOKEN_MS=0, FAKE_OPENAI_TOKENS_PER_SECOND=0)
        gateway = await cluster.gateway(**FUZZ_GATEWAY_ENV)
        await cluster.worker()
        return await fuzz(
            gateway.extra["ws_url"],
            gateway.pid,
            frames=args.frames,
            concurrency=args.concurrency,
            seconds=args.seconds,
            seed=args.seed,
            log_path=gateway.log_path,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-dir", default="/tmp/fuzz-gateway-logs")
    args = parser.parse_args()
    report = asyncio.run(_standalone(args))
    print(json.dumps(report.as_dict(), indent=2))
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
