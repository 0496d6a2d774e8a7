"""Chaos run: steady chat load while workers, gateways, the broker connection and the database are
disturbed in turn; at the end, the counts (sent, answered, failed by code, lost, duplicated).

Everything runs on this machine against the real RabbitMQ and PostgreSQL, in a vhost and a database
of its own (removed afterwards), and a Redis server of its own (``redis-server`` on a free port,
without persistence): N gateways and M workers as real processes (the built-in fake model), every
process reaching RabbitMQ and PostgreSQL through TCP proxies this script can cut. Clients are
``tests.support.resilient.ResilientClient``: they reconnect to another gateway when theirs goes, and
rejoin their chat naming the answer they were reading and the last chunk they saw (resume).

Faults, in turn, every ``--fault-every`` seconds: SIGKILL a worker (and start a new one), SIGTERM a
gateway (restart it on its port), cut the broker connections for a few seconds, SIGTERM a worker,
cut the database for a few seconds, SIGKILL a gateway, terminate the database backends, close every
broker connection of the vhost from the broker side, kill Redis and start it again empty 3 s later,
SIGKILL a gateway and then, as its clients resume their answers on the other one, SIGKILL a worker.
``--faults`` picks some of them (by name) instead.

The verdict comes from the clients and from the stored ledger: ``lost`` (accepted, neither answered
nor failed, after a settling time) and ``duplicated`` (two answers stored for one request, or a
client that saw chunks of two attempts mixed) must both be 0, and once the run settles every
connected client holds exactly one slot in Redis and no gateway still warns about Redis; the exit
status says whether they do.

    uv run python scripts/chaos.py --duration 240 --clients 30
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import jwt  # noqa: E402
import redis.asyncio as redis  # noqa: E402
from tests.support.client import make_token  # noqa: E402
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.processes import ServiceProcess, free_port  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402
from tests.support.redis_server import PrivateRedis  # noqa: E402
from tests.support.resilient import Outcome, ResilientClient  # noqa: E402
from tests.support.services import (  # noqa: E402
    Services,
    drop_database,
    drop_vhost,
    make_database,
    make_vhost,
)
from tests.support.services import close_broker_connections as close_vhost_connections  # noqa: E402
from tests.support.wait import eventually  # noqa: E402
from websockets.protocol import State  # noqa: E402

log = logging.getLogger("chaos")


@dataclasses.dataclass
class Stage:
    cluster: Cluster
    amqp: TcpProxy
    database: TcpProxy
    services: Services
    gateway_ports: list[int]
    gateways: dict[int, ServiceProcess]
    workers: list[ServiceProcess]
    env: dict[str, str | int]
    direct_database_url: str
    redis: PrivateRedis
    clients: list[ResilientClient] = dataclasses.field(default_factory=list)


async def start_stage(args: argparse.Namespace, log_dir: Path) -> Stage:
    amqp_base = args.amqp_url
    database_base = args.database_url
    amqp_url, vhost = await asyncio.to_thread(make_vhost, amqp_base)
    database_url, name = await make_database(database_base)
    amqp = await TcpProxy(amqp_url, 5672).start()
    database = await TcpProxy(database_url, 5432).start()
    redis_server = PrivateRedis(log_dir)
    await redis_server.start()
    services = Services(
        amqp_url=amqp.url(amqp_url), database_url=database.url(database_url), redis_url="", vhost=vhost, database=name
    )
    cluster = Cluster(services, log_dir)
    cluster.start_timeout = 120  # a loaded machine starts slowly
    env: dict[str, str | int] = {
        "LLM_PROVIDER": "fake",
        "FAKE_LLM_FIRST_TOKEN_MS": 150,
        "FAKE_LLM_TOKENS_PER_SECOND": 40,
        "FAKE_LLM_ANSWER_TOKENS": args.answer_tokens,
        "WS_RATE_LIMIT_MAX_MESSAGES": 1000,
        "REQUEST_TIMEOUT": 30_000,
        "PUBLISH_TIMEOUT": 2_000,
        "SHUTDOWN_GRACE": 5_000,
        "SHUTDOWN_SPREAD": 2_000,
        "RESUME_GRACE": 15_000,
        "REDIS_URL": redis_server.url,
        "REDIS_SLOT_TTL": 5_000,
        "LOG_LEVEL": "WARNING",
    }
    stage = Stage(cluster, amqp, database, services, [], {}, [], env, database_url, redis_server)
    try:
        for _ in range(args.gateways):
            port = free_port()
            stage.gateway_ports.append(port)
            stage.gateways[port] = await cluster.gateway(gateway_port=port, **env)
        for _ in range(args.workers):
            stage.workers.append(await cluster.worker(**env))
    except BaseException:
        await stop_stage(stage, args)
        raise
    return stage


async def stop_stage(stage: Stage, args: argparse.Namespace) -> None:
    await stage.cluster.stop_all()
    await stage.amqp.close()
    await stage.database.close()
    stage.redis.stop()
    await drop_database(args.database_url, stage.services.database)
    await asyncio.to_thread(drop_vhost, stage.services.vhost)


# --------------------------------------------------------------------------- faults


async def kill_worker(stage: Stage, rng: random.Random) -> str:
    victim = rng.choice(stage.workers)
    victim.signal(signal.SIGKILL)
    await victim.wait_exit(10)
    stage.workers.remove(victim)
    stage.workers.append(await stage.cluster.worker(**stage.env))
    return "SIGKILL worker, new worker started"


async def stop_worker(stage: Stage, rng: random.Random) -> str:
    victim = rng.choice(stage.workers)
    replacement = asyncio.create_task(stage.cluster.worker(**stage.env))
    victim.signal(signal.SIGTERM)
    code = await victim.wait_exit(30)
    stage.workers.remove(victim)
    stage.workers.append(await replacement)
    return f"SIGTERM worker (exit {code}), new worker started"


async def restart_gateway(stage: Stage, rng: random.Random, sig: int) -> str:
    # the gateway holding the most clients: clients that moved away after a restart do not come back
    held = collections.Counter(c.url for c in stage.clients)
    port = max(stage.gateway_ports, key=lambda p: (held[f"ws://127.0.0.1:{p}/ws/chat"], rng.random()))
    victim = stage.gateways[port]
    victim.signal(sig)
    code = await victim.wait_exit(30)
    stage.gateways[port] = await stage.cluster.gateway(gateway_port=port, **stage.env)
    clients = held[victim.extra["ws_url"]]
    return f"{signal.Signals(sig).name} gateway :{port} holding {clients} clients (exit {code}), restarted"


async def cut_broker(stage: Stage, _rng: random.Random) -> str:
    await stage.amqp.cut()
    await asyncio.sleep(3)  # the outage's length: the fault itself
    stage.amqp.restore()
    return "broker connections cut for 3 s"


async def cut_database(stage: Stage, _rng: random.Random) -> str:
    await stage.database.cut()
    await asyncio.sleep(3)  # the outage's length: the fault itself
    stage.database.restore()
    return "database connections cut for 3 s"


async def terminate_backends(stage: Stage, args: argparse.Namespace) -> str:
    connection = await asyncpg.connect(args.database_url)
    try:
        count = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            stage.services.database,
        )
    finally:
        await connection.close()
    return f"pg_terminate_backend on {count} backends"


async def close_broker_connections(stage: Stage) -> str:
    vhost = stage.services.vhost
    result = None if vhost is None else await close_vhost_connections(vhost, "chaos")
    if result is None:
        return "rabbitmqctl not available: skipped"
    return f"rabbitmqctl close_all_connections (exit {result.returncode})"


async def restart_redis(stage: Stage) -> str:
    stage.redis.stop()
    await asyncio.sleep(3)  # the outage's length: the fault itself
    await stage.redis.start()
    return "Redis killed, started again empty after 3 s"


async def kill_worker_during_resumes(stage: Stage, rng: random.Random) -> str:
    """SIGKILL a gateway; once its clients have reconnected to the other one (and asked to resume
    their answers), SIGKILL a worker: its answers are redelivered and must reach the new connections."""
    held = collections.Counter(c.url for c in stage.clients)
    port = max(stage.gateway_ports, key=lambda p: (held[f"ws://127.0.0.1:{p}/ws/chat"], rng.random()))
    victim = stage.gateways[port]
    moving = [c for c in stage.clients if c.url == victim.extra["ws_url"]]
    victim.signal(signal.SIGKILL)
    await victim.wait_exit(10)

    def moved() -> int:
        return sum(c.url != victim.extra["ws_url"] for c in moving)

    # up to 5 s for half of them to have rejoined elsewhere (and asked to resume); the fault goes on regardless
    with contextlib.suppress(AssertionError):
        await eventually(moved, timeout=5, interval=0.05, accept=lambda n: n >= len(moving) / 2)
    worker = await kill_worker(stage, rng)
    stage.gateways[port] = await stage.cluster.gateway(gateway_port=port, **stage.env)
    rejoined = f"{moved()} of {len(moving)} clients rejoined elsewhere"
    return f"SIGKILL gateway :{port} ({rejoined}), then {worker}; gateway restarted"


async def disturb(stage: Stage, args: argparse.Namespace, stop: asyncio.Event, journal: list[str]) -> None:
    rng = random.Random(args.seed)  # noqa: S311 - choosing victims, not secrets
    every = {
        "kill-worker": lambda: kill_worker(stage, rng),
        "stop-gateway": lambda: restart_gateway(stage, rng, signal.SIGTERM),
        "cut-broker": lambda: cut_broker(stage, rng),
        "stop-worker": lambda: stop_worker(stage, rng),
        "cut-database": lambda: cut_database(stage, rng),
        "kill-gateway": lambda: restart_gateway(stage, rng, signal.SIGKILL),
        "terminate-backends": lambda: terminate_backends(stage, args),
        "close-broker-connections": lambda: close_broker_connections(stage),
        "restart-redis": lambda: restart_redis(stage),
        "kill-worker-during-resumes": lambda: kill_worker_during_resumes(stage, rng),
    }
    names = args.faults.split(",") if args.faults else list(every)
    faults = [every[name] for name in names]
    started = time.monotonic()
    index = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), args.fault_every)
            return
        except TimeoutError:
            pass
        what = await faults[index % len(faults)]()
        line = f"{time.monotonic() - started:6.1f}s  {what}"
        journal.append(line)
        print(line, flush=True)
        index += 1


# --------------------------------------------------------------------------- load


async def converse(client: ResilientClient, stop: asyncio.Event, think_s: float, out: list[Outcome]) -> None:
    rng = random.Random()  # noqa: S311 - think times
    await client.start(timeout=60)
    while not stop.is_set():
        out.append(await client.ask("chaos question", timeout=90))
        await asyncio.sleep(rng.uniform(0.5, 1.5) * think_s)


async def verdict(stage: Stage, clients: list[ResilientClient], outcomes: list[Outcome]) -> dict[str, Any]:
    connection = await asyncpg.connect(stage.direct_database_url)
    try:
        chats = [c.chat_id for c in clients if c.chat_id]
        rows = await connection.fetch(
            "SELECT m.id::text, m.role, m.request_id::text, m.status, m.error_code FROM messages m"
            " WHERE m.chat_id = ANY($1::uuid[])",
            chats,
        )
    finally:
        await connection.close()
    users = {r["id"]: r for r in rows if r["role"] == "user"}
    answers = collections.Counter(r["request_id"] for r in rows if r["role"] == "assistant")
    answered_requests = set(answers)
    failed_codes: collections.Counter[str] = collections.Counter()
    client_seen: dict[str, Outcome] = {o.user_message_id: o for o in outcomes if o.user_message_id}
    counts = collections.Counter(o.result for o in outcomes)
    lost = []
    for message_id, user in users.items():
        if user["request_id"] in answered_requests:
            continue
        if user["status"] == "failed":
            failed_codes[user["error_code"] or "?"] += 1
            continue
        lost.append(message_id)
    client_failed = collections.Counter(o.code or "?" for o in outcomes if o.result == "failed")
    not_stored = [o for o in outcomes if o.result == "failed" and o.user_message_id is None]
    unknown = [o for o in outcomes if o.result == "unknown"]
    unresolved = [o for o in unknown if o.user_message_id is None or o.user_message_id not in users]
    return {
        "sent": sum(1 for o in outcomes if o.result != "unsent"),
        "unsent (socket closed before the send)": counts["unsent"],
        "accepted (stored user messages)": len(users),
        "answered (stored answers)": len(answered_requests & {u["request_id"] for u in users.values()}),
        "answered as seen by clients": counts["answered"],
        "failed, recorded, by code": dict(failed_codes),
        "failed as seen by clients, by code": dict(client_failed),
        "refused before storing (BUSY: storage away)": len(not_stored),
        "clients without a conclusion (resolved from the ledger)": len(unknown),
        "lost": len(lost) + len(unresolved),
        "duplicated": sum(1 for n in answers.values() if n > 1) + sum(1 for o in outcomes if o.garbled),
        "restarted answers (attempt > 1)": sum(o.restarts for o in outcomes),
        "resumed answers": sum(o.resumes for o in outcomes),
        "resumes answered 'not resumed' (found in the history)": sum(o.not_resumed for o in outcomes),
        "reconnects": sum(c.reconnects for c in clients),
        "accepted but unknown to the client": len(set(users) - set(client_seen)),
    }


async def redis_figures(stage: Stage, clients: list[ResilientClient]) -> dict[str, Any]:
    """After the run: does Redis hold one slot per connected client, and has every warning cleared?"""
    client = redis.Redis.from_url(stage.redis.url)
    connected = [c for c in clients if c.ws is not None and c.ws.state is State.OPEN]
    try:
        slots: collections.Counter[int] = collections.Counter()
        seconds, micros = await client.time()
        now_ms = seconds * 1000 + micros // 1000  # slots are scored by their expiry on the Redis clock
        for chat_client in connected:
            user_id = jwt.decode(chat_client.token, options={"verify_signature": False})["sub"]
            slots[int(await client.zcount(f"chat:slots:{{{user_id}}}", now_ms, "+inf"))] += 1
        users = int(await client.zcount("chat:users", now_ms, "+inf"))
    finally:
        await client.aclose()
    warning = 0
    async with httpx.AsyncClient(timeout=5) as http:
        for gateway in stage.gateways.values():
            health = (await http.get(gateway.extra["http_url"] + "/api/websocket/health")).json()
            warning += any("Redis" in issue for issue in health["issues"])
    return {
        "connected clients": len(connected),
        "connected clients by Redis slots held": dict(sorted(slots.items())),
        "connected clients without exactly one Redis slot": sum(n for held, n in slots.items() if held != 1),
        "users counted in Redis": users,
        "gateways still warning about Redis": warning,
    }


async def run(args: argparse.Namespace) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="chaos-logs-"))
    print(f"logs in {log_dir}", flush=True)
    stage = await start_stage(args, log_dir)
    try:
        urls = [f"ws://127.0.0.1:{port}/ws/chat" for port in stage.gateway_ports]
        clients = [
            ResilientClient(urls[i % len(urls) :] + urls[: i % len(urls)], make_token(f"chaos-{i}-{time.time_ns()}"))
            for i in range(args.clients)
        ]
        stage.clients = clients
        outcomes: list[Outcome] = []
        stop = asyncio.Event()
        journal: list[str] = []
        started = time.monotonic()
        talks = [asyncio.create_task(converse(c, stop, args.think, outcomes)) for c in clients]
        chaos = asyncio.create_task(disturb(stage, args, stop, journal))
        await asyncio.sleep(args.duration)
        stop.set()
        await chaos
        print("load stopped; waiting for the answers in flight", flush=True)
        await asyncio.gather(*talks, return_exceptions=True)
        await asyncio.sleep(args.settle)
        figures = await verdict(stage, clients, outcomes)
        figures.update(await redis_figures(stage, clients))
        figures["duration_s"] = round(time.monotonic() - started, 1)
        figures["faults"] = journal
        for client in clients:
            await client.close()
    finally:
        await stop_stage(stage, args)
    print(json.dumps(figures, indent=2))
    ok = (
        figures["lost"] == 0
        and figures["duplicated"] == 0
        and figures["connected clients without exactly one Redis slot"] == 0
        and figures["gateways still warning about Redis"] == 0
    )
    print("VERDICT:", "lost = 0, duplicated = 0, Redis slots exact" if ok else "FAILED")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=240, help="seconds of load with faults (default 240)")
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between a client's questions")
    parser.add_argument("--fault-every", type=float, default=15, help="seconds between faults")
    parser.add_argument("--answer-tokens", type=int, default=40)
    parser.add_argument(
        "--settle",
        type=float,
        default=65,
        help="seconds to wait before reading the ledger: past REQUEST_TIMEOUT (30 s) and the reaper's margin",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--faults",
        default="",
        help="comma-separated fault names, in turn (default: all): kill-worker, stop-gateway, cut-broker, "
        "stop-worker, cut-database, kill-gateway, terminate-backends, close-broker-connections, "
        "restart-redis, kill-worker-during-resumes",
    )
    parser.add_argument("--amqp-url", default="amqp://guest:guest@localhost:5672/")
    parser.add_argument("--database-url", default="postgresql://postgres@localhost:5432/postgres")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
