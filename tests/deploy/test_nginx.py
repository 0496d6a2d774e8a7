"""deploy/nginx with a real nginx: the config is valid, and two gateway processes behind it work as one.

nginx runs as a plain process on free ports with the repository's nginx.conf and chat.conf rendered
from the same template (by render.py, as an operator would), TLS block uncommented with a throwaway
certificate. nginx balances by open connections (least_conn); clients connect from their own
127.0.X.1 source addresses, which the gateways must see (X-Forwarded-For) for the per-address limit;
the per-user limits must hold across the two because both gateways share Redis (REDIS_URL).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.deploy.support import ROOT, load_compose, service_environment
from tests.support.client import ChatClient, make_token
from tests.support.cluster import Cluster
from tests.support.processes import ServiceProcess, free_port
from tests.support.wait import eventually

TLS_BEGIN, TLS_END = "# --- TLS ---", "# --- end TLS ---"


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    assert found, "nginx is not installed: run scripts/ensure-nginx.sh (scripts/test.sh does)"
    return found


def render(listen: str, gateways: list[str]) -> str:
    argv = [sys.executable, str(ROOT / "deploy/nginx/render.py"), "--listen", listen]
    for gateway in gateways:
        argv += ["--gateway", gateway]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def enable_tls(config: str, *, listen: str, cert: Path, key: Path) -> str:
    """Uncomment the template's TLS block, as its comment tells an operator to, with test paths."""
    head, rest = config.split(TLS_BEGIN, 1)
    block, tail = rest.split(TLS_END, 1)
    lines = [line.replace("# ", "", 1) if line.strip().startswith("# ") else line for line in block.splitlines()]
    enabled = "\n".join(lines)
    assert "listen 443 ssl;" in enabled
    enabled = enabled.replace("listen 443 ssl;", f"listen {listen} ssl;")
    enabled = enabled.replace("/etc/nginx/tls/fullchain.pem", str(cert)).replace("/etc/nginx/tls/privkey.pem", str(key))
    return head + enabled + tail


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "fullchain.pem", folder / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Nginx:
    prefix: Path
    config: Path
    process: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        return [
            nginx_binary(),
            "-p",
            str(self.prefix),
            "-c",
            str(self.config),
            "-e",
            str(self.prefix / "error.log"),
            "-g",
            f"daemon off; pid {self.prefix / 'nginx.pid'};",
            *extra,
        ]

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> None:
        log = (self.prefix / "stdout.log").open("ab")
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: let connections close
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def prepare(folder: Path, chat_conf: str) -> Nginx:
    (folder / "conf.d").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "deploy/nginx/nginx.conf", folder / "nginx.conf")
    (folder / "conf.d/chat.conf").write_text(chat_conf)
    return Nginx(prefix=folder, config=folder / "nginx.conf")


def test_rendered_config_passes_nginx_t_as_shipped_and_with_tls(tmp_path: Path) -> None:
    plain = prepare(tmp_path / "plain", render("127.0.0.1:18080", ["127.0.0.1:13000", "127.0.0.1:13001"]))
    result = plain.test_config()
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr

    cert, key = self_signed(tmp_path)
    tls = prepare(
        tmp_path / "tls",
        enable_tls(
            render("80", ["gateway-1:3000"]).replace("gateway-1", "127.0.0.1"), listen="18443", cert=cert, key=key
        ),
    )
    result = tls.test_config()
    assert result.returncode == 0, result.stderr

    broken = prepare(
        tmp_path / "broken", render("127.0.0.1:18081", ["127.0.0.1:13000"]).replace("least_conn;", "least_conn")
    )
    assert broken.test_config().returncode != 0, "nginx -t must reject a broken file (the check is real)"


def test_compose_rendering_by_the_nginx_image_matches_render_py_and_passes_nginx_t(tmp_path: Path) -> None:
    """What the nginx image's entrypoint does with the compose environment: envsubst of only the
    variables matching NGINX_ENVSUBST_FILTER. It must give render.py's output for the same gateways."""
    envsubst = shutil.which("envsubst")
    assert envsubst, "envsubst is missing: run scripts/ensure-nginx.sh"
    env = service_environment(load_compose()["services"]["nginx"], {})
    chosen = {name: value for name, value in env.items() if re.search(env["NGINX_ENVSUBST_FILTER"], name)}
    template = (ROOT / "deploy/nginx/chat.conf.template").read_text()
    by_image = subprocess.run(
        [envsubst, " ".join(f"${{{name}}}" for name in chosen)],
        input=template,
        env={**chosen, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    servers = re.findall(r"server ([\w.-]+:\d+)", env["NGINX_CHAT_GATEWAY_SERVERS"])
    assert by_image == render(env["NGINX_CHAT_LISTEN"], servers)
    assert "$http_upgrade" in by_image
    assert "$remote_addr" in by_image

    local = by_image.replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
    for host, _port in (server.split(":") for server in servers):
        local = local.replace(f"server {host}:", "server 127.0.0.1:")  # compose DNS names, here
    result = prepare(tmp_path, local).test_config()
    assert result.returncode == 0, result.stderr


def test_render_refuses_a_template_value_it_was_not_given() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "deploy/nginx/render.py"), "--listen", "80"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "--gateway" in result.stderr


@dataclass
class Balanced:
    nginx: Nginx
    gateways: list[ServiceProcess]
    ws_url: str
    wss_url: str
    http_url: str
    ssl_context: ssl.SSLContext


@pytest.fixture
async def balanced(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Balanced]:
    """Fake OpenAI, one worker, two gateways sharing Redis, and nginx in front (ws and wss)."""
    limits = {
        "WS_MAX_CONNECTIONS_PER_USER": 3,
        "WS_RATE_LIMIT_MAX_MESSAGES": 4,
        "WS_MAX_UNAUTHENTICATED_PER_ADDRESS": 2,
        "REDIS_URL": cluster.services.redis_url,
    }
    await cluster.fake_openai()
    gateways = [await cluster.gateway(**limits), await cluster.gateway(**limits)]
    await cluster.worker()
    port, tls_port = free_port(), free_port()
    cert, key = self_signed(tmp_path)
    conf = render(f"127.0.0.1:{port}", [f"127.0.0.1:{gw.extra['port']}" for gw in gateways])
    nginx = prepare(tmp_path / "nginx", enable_tls(conf, listen=f"127.0.0.1:{tls_port}", cert=cert, key=key))
    nginx.start()
    context = ssl.create_default_context(cafile=str(cert))
    try:
        await wait_http(f"http://127.0.0.1:{port}/nginx-health", nginx)
        yield Balanced(
            nginx=nginx,
            gateways=gateways,
            ws_url=f"ws://127.0.0.1:{port}/ws/chat",
            wss_url=f"wss://localhost:{tls_port}/ws/chat",
            http_url=f"http://127.0.0.1:{port}",
            ssl_context=context,
        )
    finally:
        nginx.stop()


class NginxExited(Exception):
    """nginx stopped while a test waited for it: no point waiting longer."""


async def wait_http(url: str, nginx: Nginx, timeout: float = 15) -> None:
    async with httpx.AsyncClient(timeout=2) as client:

        async def answers() -> bool:
            assert nginx.process is not None
            if nginx.process.poll() is not None:
                raise NginxExited
            return (await client.get(url)).status_code == 200

        try:
            await eventually(answers, timeout=timeout, retry_on=(httpx.HTTPError,))
        except NginxExited:
            raise AssertionError(f"nginx exited: {nginx.error_log()}") from None
        except AssertionError as exc:
            raise AssertionError(f"nginx did not answer: {nginx.error_log()}") from exc


async def connections(gateway: ServiceProcess) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(gateway.extra["http_url"] + "/api/websocket/health")
        return int(response.json()["metrics"]["totalConnections"])


async def connect_from(url: str, source: str) -> ChatClient:
    return await ChatClient.connect(url, local_addr=(source, 0))


async def placed(setup: Balanced, source: str) -> tuple[ChatClient, int]:
    """A new socket through nginx from ``source`` and the gateway it landed on (seen in the gateways'
    own connection counts; the test opens one socket at a time)."""
    before = [await connections(gw) for gw in setup.gateways]
    client = await connect_from(setup.ws_url, source)

    async def grown() -> list[int]:
        after = [await connections(gw) for gw in setup.gateways]
        return [i for i in range(len(after)) if after[i] > before[i]]

    try:
        landed = await eventually(grown, timeout=10, interval=0.05, what=f"a gateway counting the socket from {source}")
    except AssertionError:
        await client.close()
        raise
    return client, landed[0]


async def settled(setup: Balanced, total: int) -> None:
    """Wait (bounded) until the gateways together count ``total`` sockets: closes have landed."""

    async def counted() -> int:
        return sum([await connections(gw) for gw in setup.gateways])

    await eventually(
        counted,
        timeout=10,
        interval=0.05,
        accept=lambda n: n == total,
        what=f"the gateways settling at {total} sockets",
    )


async def closed_with(client: ChatClient) -> int | None:
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        while True:
            await client.recv(timeout=5)
    return client.ws.close_code


@pytest.mark.timeout(120)
async def test_clients_through_nginx_reach_both_gateways_and_limits_hold_across_them(balanced: Balanced) -> None:
    """least_conn spreads even one address's sockets; answers via each gateway; the per-address limit
    (per gateway, on the client's own address), the per-user connection and rate limits (cluster-wide
    through Redis); then wss and the HTTP API."""
    user = f"lb-{uuid.uuid4().hex[:8]}"

    # least_conn: two sockets from one address land on both gateways (ip_hash would put both on one)
    first, on_first = await placed(balanced, "127.0.1.1")
    second, on_second = await placed(balanced, "127.0.1.1")
    try:
        assert {on_first, on_second} == {0, 1}, "the balancer is not spreading by open connections"
        # answers come back through nginx from each gateway
        for client in (first, second):
            joined = await client.join(make_token(f"{user}-ask"), "messages")
            assert joined["type"] == "chat_joined", joined
            answer = await client.ask(f"Through nginx via gateway {on_first if client is first else on_second}?")
            assert answer.error is None, answer.error
            assert answer.end is not None
            assert "Through nginx via gateway" in answer.end["content"]
    finally:
        await first.close()
        await second.close()
    await settled(balanced, 0)

    # sockets waiting to authenticate are limited per *client* address (X-Forwarded-For) on each
    # gateway: 2 per gateway from one address, the fifth is refused wherever it lands, while another
    # address is not
    waiting = [(await placed(balanced, "127.0.2.1"))[0] for _ in range(4)]
    try:
        third = await connect_from(balanced.ws_url, "127.0.2.1")
        refused = await third.recv()
        assert refused["data"]["code"] == "TOO_MANY_CONNECTIONS", refused
        assert await closed_with(third) == 1008
        async with await connect_from(balanced.ws_url, "127.0.3.1") as neighbour:
            joined = await neighbour.join(make_token(f"{user}-neighbour"), "messages")
            assert joined["type"] == "chat_joined", joined
    finally:
        for client in waiting:
            await client.close()
    await settled(balanced, 0)

    # WS_MAX_CONNECTIONS_PER_USER=3 over both gateways: the fourth is refused wherever it lands
    token = make_token(user)
    held = [await placed(balanced, f"127.0.{4 + n}.1") for n in range(3)]
    try:
        for client, _ in held:
            assert (await client.join(token, "messages"))["type"] == "chat_joined"
        assert {gateway for _, gateway in held} == {0, 1}, "the user's sockets are on both gateways"
        extra = await connect_from(balanced.ws_url, "127.0.8.1")
        refused = await extra.join(token, "messages")
        assert refused["type"] == "error", refused
        assert refused["data"]["code"] == "TOO_MANY_CONNECTIONS"
        assert await closed_with(extra) == 1008, "the close code passes through nginx"

        # a freed slot is usable again (the count lives in Redis, not on one gateway)
        await held.pop(0)[0].close()

        async def rejoined() -> tuple[ChatClient, int]:
            retry, gateway = await placed(balanced, "127.0.9.1")
            joined = await retry.join(token, "messages")
            if joined["type"] != "chat_joined":
                await retry.close()
                raise AssertionError(joined)  # the freed slot has not reached Redis yet
            return retry, gateway

        held.append(await eventually(rejoined, timeout=10, interval=0.2, what="a join in the freed slot"))

        # WS_RATE_LIMIT_MAX_MESSAGES=4 per user over both gateways: 2 on each, the fifth is limited
        on_a = next(client for client, gw in held if gw == 0)
        on_b = next(client for client, gw in held if gw == 1)
        for client in (on_a, on_b, on_a, on_b):
            answer = await client.ask("Is a verbal contract binding?")
            assert answer.error is None, answer.error
        limited = await on_a.ask("One more?")
        assert limited.error is not None
        assert limited.error["code"] == "RATE_LIMITED"
        assert limited.error["retryAfterMs"] > 0
        limited_b = await on_b.ask("And here?")
        assert limited_b.error is not None
        assert limited_b.error["code"] == "RATE_LIMITED"
    finally:
        for client, _ in held:
            await client.close()

    # wss: the template's TLS block, uncommented, terminates TLS for the same gateways
    async with await ChatClient.connect(balanced.wss_url, ssl=balanced.ssl_context) as client:
        joined = await client.join(make_token(f"tls-{uuid.uuid4().hex[:8]}"), "documents")
        assert joined["type"] == "chat_joined", joined
        answer = await client.ask("Over TLS?")
        assert answer.error is None, answer.error
        assert answer.end is not None
        assert "Over TLS?" in answer.end["content"]

    # the gateway's HTTP API and chat page pass through; Prometheus metrics do not
    async with httpx.AsyncClient(timeout=5) as http:
        health = await http.get(balanced.http_url + "/api/websocket/health")
        assert health.status_code == 200
        assert health.json()["status"] in ("healthy", "warning")
        assert (await http.get(balanced.http_url + "/metrics")).status_code == 404, "metrics stay internal"
        page = await http.get(balanced.http_url + "/chat/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")


# ---------------------------------------------------------------------------------------------
# A rolling update as compose does it: same names and port, new addresses
# ---------------------------------------------------------------------------------------------


class NamedNginx(Nginx):
    """nginx in a mount namespace of its own whose /etc/hosts is the test's file: the gateways' names
    resolve like compose's service names, and the test moves them to new addresses as compose does
    when it recreates a container (nginx resolves upstream names when it loads its config)."""

    hosts: Path

    def start(self) -> None:
        log = (self.prefix / "stdout.log").open("ab")
        argv = " ".join(shlex.quote(word) for word in self.argv())
        self.process = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount --bind {shlex.quote(str(self.hosts))} /etc/hosts && exec {argv}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    async def reload(self) -> None:
        """The rolling update's step after each gateway: `nginx -s reload` (SIGHUP to the master).
        Done when the workers of the old configuration are gone (the test has closed its sockets, so
        they exit at once; until then one of them may still accept a new connection)."""
        assert self.process is not None
        before = self.workers()
        self.process.send_signal(signal.SIGHUP)

        def replaced() -> bool:
            now = self.workers()
            return bool(now - before) and not now & before

        try:
            await eventually(replaced, timeout=15, interval=0.05, what="nginx's workers replaced")
        except AssertionError as exc:
            raise AssertionError(self.error_log()) from exc

    def workers(self) -> set[int]:
        assert self.process is not None
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.process.pid:
                    found.add(int(stat.parent.name))
        return found


def point(hosts: Path, names: dict[str, str]) -> None:
    """Rewrite the hosts file in place (same inode: the bind mount shows the new text)."""
    with hosts.open("r+") as file:
        file.truncate(0)
        file.write("".join(f"{address} {name}\n" for name, address in names.items()))


async def answered_through(url: str, question: str) -> str | None:
    """One new client through nginx: the answer's text, or None when it could not get one."""
    try:
        async with await ChatClient.connect(url) as client:
            joined = await client.join(make_token(f"roll-{uuid.uuid4().hex[:8]}"), "messages")
            if joined["type"] != "chat_joined":
                return None
            answer = await client.ask(question)
            return None if answer.end is None else str(answer.end["content"])
    except (OSError, ConnectionClosed, TimeoutError, InvalidHandshake):
        return None


@pytest.mark.timeout(180)
async def test_nginx_keeps_answering_while_both_gateways_are_replaced(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose recreates gateway-1, then gateway-2 (same name and port, a new address each); the
    documented rolling update reloads nginx after each one, and answers keep coming back. Without the
    reload nginx keeps the addresses it resolved at start: after both are replaced it answers 502."""
    assert os.geteuid() == 0, "this test needs root (a mount namespace for nginx's /etc/hosts)"
    addresses = [f"127.0.200.{n}" for n in range(1, 20)]
    # behind an HTTP proxy (http_proxy set), httpx's NO_PROXY takes addresses, not 127.0.0.0/8
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, ",".join(filter(None, [os.environ.get(name, ""), *addresses])))
    await cluster.fake_openai()
    await cluster.worker()
    port = free_port()
    address = iter(addresses)
    names = {"gateway-1": next(address), "gateway-2": next(address)}
    gateways = {name: await cluster.gateway(host=ip, gateway_port=port) for name, ip in names.items()}
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    point(hosts, {"localhost": "127.0.0.1", **names})

    listen = free_port()
    conf = render(f"127.0.0.1:{listen}", [f"{name}:{port}" for name in names])
    (tmp_path / "nginx" / "conf.d").mkdir(parents=True)
    shutil.copy(ROOT / "deploy/nginx/nginx.conf", tmp_path / "nginx/nginx.conf")
    (tmp_path / "nginx/conf.d/chat.conf").write_text(conf)
    nginx = NamedNginx(prefix=tmp_path / "nginx", config=tmp_path / "nginx/nginx.conf")
    nginx.hosts = hosts
    nginx.start()
    url = f"ws://127.0.0.1:{listen}/ws/chat"
    try:
        await wait_http(f"http://127.0.0.1:{listen}/nginx-health", nginx)
        assert await answered_through(url, "Before the update?") is not None, nginx.error_log()

        async def replace(name: str) -> None:
            await gateways[name].stop()  # `up --no-deps` stops the old container first
            names[name] = next(address)
            gateways[name] = await cluster.gateway(host=names[name], gateway_port=port)
            point(hosts, {"localhost": "127.0.0.1", **names})

        for name in ("gateway-1", "gateway-2"):
            await replace(name)
            # between the recreate and the reload nginx still has the old address: it tries the other
            assert await answered_through(url, f"While {name} is replaced?") is not None, nginx.error_log()
            await nginx.reload()
            for n in range(3):
                text = await answered_through(url, f"After {name} was replaced, {n}?")
                assert text is not None, nginx.error_log()
                assert f"After {name} was replaced, {n}?" in text
        # the answers after the second reload came from the new processes (the old ones are gone)
        assert sum([await requests_seen(gateway) for gateway in gateways.values()]) >= 3

        # the old procedure, without the reload: both names move again and nginx has only dead addresses
        for name in ("gateway-1", "gateway-2"):
            await replace(name)
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(f"http://127.0.0.1:{listen}/api/websocket/health")
        assert response.status_code == 502, "nginx without a reload must be on the dead addresses"
        await nginx.reload()
        assert await answered_through(url, "And after a reload?") is not None, nginx.error_log()
    finally:
        nginx.stop()


async def requests_seen(gateway: ServiceProcess) -> int:
    """Chat requests this gateway has published since it started (from its Prometheus metrics)."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(gateway.extra["http_url"] + "/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("chat_gateway_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)
