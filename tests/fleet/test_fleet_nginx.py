"""docs/fleet.md's nginx configuration, run: three ``wslifecycle serve
--redis`` nodes (one per driver) on one redis-server, behind a real nginx
that uses the page's own ``nginx`` block with the ports put in. So the page
cannot drift from what is tested.

Clients connect through nginx's plain round-robin and land on different
nodes; every one of them sees every message of the channel, in ``seq``
order; a client that reconnects through nginx onto another node resumes
with ``since`` and ``epoch`` and gets exactly what it missed."""

from __future__ import annotations

import contextlib
import json
import pathlib
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.drivers.harness import cli_server
from tests.fleet.redis_server import RedisServer
from tests.nginx import NGINX, listening, nginx_conf

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "fleet.md"
HEADING = "## Three nodes behind nginx, without sticky sessions"
DOC_NODES = ("127.0.0.1:8765", "127.0.0.1:8766", "127.0.0.1:8767")  # the page's upstreams
DOC_LISTEN = "listen 8080;"
DRIVERS = ("asyncio", "selector", "trio")
CLIENTS = 6
EACH = 3  # messages each client publishes
WAIT = 10.0  # seconds: the bound on every wait for a message


# ------------------------------------------------------------------- config


def doc_block() -> str:
    """The ``nginx`` block under the page's heading, as written."""
    section = DOC.read_text(encoding="utf-8").split(HEADING, 1)
    assert len(section) == 2, f"docs/fleet.md lost its heading {HEADING!r}"
    found = re.search(r"```nginx\n(.*?)```", section[1], re.DOTALL)
    assert found is not None, "docs/fleet.md lost the nginx block under its heading"
    return found[1]


def with_ports(block: str, listen: int, nodes: list[int]) -> str:
    """The page's block with real ports: each placeholder must be there
    exactly once, so a change to the page that this misses fails here."""
    replacements = {DOC_LISTEN: f"listen 127.0.0.1:{listen};"}
    for placeholder, port in zip(DOC_NODES, nodes, strict=True):
        replacements[f"server {placeholder};"] = f"server 127.0.0.1:{port};"
    for old, new in replacements.items():
        assert block.count(old) == 1, f"docs/fleet.md's nginx block: {old!r} is not there once"
        block = block.replace(old, new)
    return block


@contextlib.contextmanager
def nginx(tmp: pathlib.Path, nodes: list[int]) -> Iterator[int]:
    """A real nginx with the page's configuration on a free port; its port."""
    if NGINX is None:
        pytest.fail("nginx is not installed: bash .ci/setup installs it")
    block = doc_block()
    # A free port is found by binding port 0 and closing it; another process
    # may take it before nginx binds it, so try again then.
    for _ in range(3):
        with socket.create_server(("127.0.0.1", 0)) as probe:
            port: int = probe.getsockname()[1]
        conf = tmp / f"nginx-{port}.conf"
        conf.write_text(nginx_conf(tmp, port, with_ports(block, port, nodes)))
        process = subprocess.Popen(
            [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if listening(port, process, timeout=10):
                yield port
                return
        finally:
            if process.poll() is None:
                process.terminate()  # SIGTERM: nginx's fast shutdown
            process.wait(10)
    errors = (tmp / "error.log").read_text(errors="replace")
    raise AssertionError(f"nginx did not start:\n{errors[-2000:]}")


# ------------------------------------------------------------------ clients


def accepted(nodes: list[int]) -> list[float]:
    """Each node's count of accepted upgrades, from its own /metrics (not
    through nginx, which would move the round-robin on)."""
    counts = []
    for port in nodes:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body: str = response.read().decode()
        found = re.search(r"^wslifecycle_handshakes_accepted_total (\S+)$", body, re.MULTILINE)
        assert found, "wslifecycle_handshakes_accepted_total not in /metrics"
        counts.append(float(found[1]))
    return counts


class Client:
    """A websockets client through nginx, and the node it landed on."""

    def __init__(self, stack: contextlib.ExitStack, proxy: int, nodes: list[int]) -> None:
        before = accepted(nodes)
        self.ws: ClientConnection = stack.enter_context(
            connect(f"ws://127.0.0.1:{proxy}/", open_timeout=WAIT, ping_interval=None)
        )
        grew = [i for i, (a, b) in enumerate(zip(before, accepted(nodes), strict=True)) if b > a]
        assert len(grew) == 1, f"one node should have accepted this client: {before} → {grew}"
        self.node = grew[0]
        self.held: list[dict[str, Any]] = []  # read while waiting for something else

    def send(self, **request: Any) -> None:
        self.ws.send(json.dumps(request))

    def next(self, kind: str) -> dict[str, Any]:
        """The next message of this ``type`` (others are kept, in order)."""
        for i, message in enumerate(self.held):
            if message["type"] == kind:
                return self.held.pop(i)
        deadline = time.monotonic() + WAIT
        while True:
            raw = self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            arrived: dict[str, Any] = json.loads(raw)
            if arrived["type"] == kind:
                return arrived
            self.held.append(arrived)

    def messages(self, count: int) -> list[dict[str, Any]]:
        return [self.next("message") for _ in range(count)]

    def subscribe(self, channel: str, **resume: Any) -> dict[str, Any]:
        self.send(type="subscribe", channel=channel, **resume)
        return self.next("subscribed")

    def publish(self, channel: str, data: Any) -> dict[str, Any]:
        self.send(type="publish", channel=channel, data=data)
        return self.next("published")


# -------------------------------------------------------------------- tests


def test_the_doc_block_is_a_plain_round_robin_with_websocket_upgrades() -> None:
    """What the page promises of its block, read from the block itself."""
    block = re.sub(r"#[^\n]*", "", doc_block())  # directives only
    upstream = re.search(r"upstream \S+ \{(.*?)\}", block, re.DOTALL)
    assert upstream is not None, "no upstream block"
    servers = re.findall(r"^\s*server (\S+);$", upstream[1], re.MULTILINE)
    assert servers == list(DOC_NODES)
    # Nothing but the servers: no ip_hash, hash, sticky, least_conn or random.
    assert re.sub(r"^\s*server \S+;$", "", upstream[1], flags=re.MULTILINE).strip() == ""
    for line in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
    ):
        assert line in block
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", block)
    assert read_timeout is not None
    assert int(read_timeout[1]) > 30, "proxy_read_timeout must be above the default heartbeat"


def test_three_nodes_behind_nginx_round_robin(
    tmp_path: pathlib.Path, redis_server: RedisServer
) -> None:
    with contextlib.ExitStack() as stack:
        nodes = [
            stack.enter_context(
                cli_server(driver, "--redis", redis_server.url, "--allow-no-origin",
                           "--trust-proxy", "--proxy-idle-timeout", "60")
            )[1]
            for driver in DRIVERS
        ]  # fmt: skip
        proxy = stack.enter_context(nginx(tmp_path, nodes))

        # Round-robin spreads the clients over the nodes.
        clients = [Client(stack, proxy, nodes) for _ in range(CLIENTS)]
        landed = sorted({client.node for client in clients})
        print(f"clients per node: {[sum(c.node == n for c in clients) for n in range(3)]}")
        assert len(landed) >= 2, f"every client landed on node {landed}"

        subscribed = [client.subscribe("room") for client in clients]
        epoch = subscribed[0]["epoch"]
        assert {(s["seq"], s["epoch"]) for s in subscribed} == {(0, epoch)}
        clients[0].send(type="members", channel="room")
        members = clients[0].next("members")
        assert len(members["ids"]) == CLIENTS, members
        assert "partial" not in members, members

        # Everyone publishes; everyone sees every message, in one seq order.
        sent = []
        for round_ in range(EACH):
            for i, client in enumerate(clients):
                data = {"from": i, "n": round_}
                published = client.publish("room", data)
                assert published["receivers"] == CLIENTS, published
                sent.append((published["seq"], data))
        total = CLIENTS * EACH
        assert [seq for seq, _ in sent] == list(range(1, total + 1))
        for client in clients:
            got = client.messages(total)
            assert [(m["seq"], m["data"]) for m in got] == sent, f"node {client.node}"

        # One client goes away; the others go on publishing.
        leaving = clients[1]
        last_seen = total
        leaving.ws.close()
        missed = []
        for n in range(4):
            published = clients[0].publish("room", {"missed": n})
            missed.append((published["seq"], {"missed": n}))
        assert [seq for seq, _ in missed] == list(range(total + 1, total + 5))

        # It comes back through nginx, onto another node, and resumes.
        for _ in range(len(nodes)):
            back = Client(stack, proxy, nodes)
            if back.node != leaving.node:
                break
            back.ws.close()  # the same node again: round-robin moves on
        else:
            pytest.fail("round-robin never took the client to another node")
        resumed = back.subscribe("room", since=last_seen, epoch=epoch)
        assert resumed == {
            "type": "subscribed",
            "channel": "room",
            "seq": total + 4,
            "epoch": epoch,
        }
        assert [(m["seq"], m["data"]) for m in back.messages(len(missed))] == missed
        live = clients[0].publish("room", "after the resume")
        assert back.next("message") == {
            "type": "message",
            "channel": "room",
            "seq": live["seq"],
            "data": "after the resume",
        }
        assert not [m for m in back.held if m["type"] == "drift"], back.held
