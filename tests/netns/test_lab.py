"""The NAT lab is real: mappings, filtering, hole punching, loss, rate, moving and teardown, shown with UDP.

Every host runs the same small UDP agent (AGENT below) on one socket, driven by one-line commands on stdin
and answering one JSON line on stdout. It also answers every ``probe`` datagram with ``seen <ip> <port>``,
so any agent is a minimal STUN-like echo server.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest
from lab import Host, Lab, LabError, netns_available

pytestmark = pytest.mark.timeout(60)

AGENT = r"""
import json, os, select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
seen = {}          # (ip, port) of an echo server -> [mapped ip, mapped port]
received = []      # [ip, port, payload] of every data / punch datagram
counts = {}        # data tag -> datagrams received

def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()

def handle_one(timeout):
    if not select.select([s], [], [], max(0.0, timeout))[0]:
        return None
    data, addr = s.recvfrom(65535)
    words = data.decode(errors="replace").split()
    if words[:1] == ["probe"]:
        s.sendto(("seen %s %d" % addr).encode(), addr)
    elif words[:1] == ["seen"]:
        seen[addr] = [words[1], int(words[2])]
    else:
        received.append([addr[0], addr[1], " ".join(words)])
        if words[:1] == ["data"]:
            counts[words[1]] = counts.get(words[1], 0) + 1
    return addr, words

def run(cmd):
    global received
    if cmd[0] == "probe":                       # probe IP PORT: our address as seen by that echo server
        target, deadline, nxt = (cmd[1], int(cmd[2])), time.monotonic() + 5, 0.0
        seen.pop(target, None)
        while target not in seen and time.monotonic() < deadline:
            if time.monotonic() >= nxt:
                s.sendto(b"probe", target); nxt = time.monotonic() + 0.1
            handle_one(min(nxt, deadline) - time.monotonic())
        return {"mapped": seen.get(target)}
    if cmd[0] == "send":                        # send IP PORT COUNT INTERVAL TAG
        target, n, gap = (cmd[1], int(cmd[2])), int(cmd[3]), float(cmd[4])
        start = time.monotonic()
        for i in range(n):
            s.sendto(("data %s %d" % (cmd[5], i)).encode(), target)
            while time.monotonic() < start + (i + 1) * gap:
                handle_one(start + (i + 1) * gap - time.monotonic())
        return {"sent": n}
    if cmd[0] == "punch":                       # punch IP PORT SECONDS: send to the peer, note what comes back
        target, end, nxt, got = (cmd[1], int(cmd[2])), time.monotonic() + float(cmd[3]), 0.0, []
        while time.monotonic() < end:
            if time.monotonic() >= nxt:
                s.sendto(b"punch", target); nxt = time.monotonic() + 0.1
            r = handle_one(min(nxt, end) - time.monotonic())
            if r and r[1][:1] == ["punch"] and r[0][0] == target[0]:
                if not got:
                    end = min(end, time.monotonic() + 0.5)   # keep going a little so the peer hears us too
                got.append(list(r[0]))
        return {"punched": got}
    if cmd[0] == "drain":                       # drain QUIET: what arrived, once QUIET s pass with nothing new
        while handle_one(float(cmd[1])):
            pass
        r, received = received, []
        return {"received": r}
    if cmd[0] == "counts":
        return {"counts": counts}
    return {"error": "unknown command %r" % cmd}

out({"ready": True})
buf = b""
while True:
    if select.select([s, 0], [], [])[0].count(0) == 0:
        handle_one(0)
        continue
    chunk = os.read(0, 4096)
    if not chunk:
        break
    buf += chunk
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        if line.strip():
            out(run(line.decode().split()))
"""

TCP_SERVER = r"""
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = srv.accept()
n, got = int(sys.argv[2]), 0
while got < n:
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += len(chunk)
conn.sendall(b"x" * n)
conn.close()
"""

TCP_CLIENT = r"""
import json, socket, sys, time
n = int(sys.argv[3])
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
t0 = time.monotonic()
c.sendall(b"y" * n)
t1 = time.monotonic()
got = 0
while got < n:
    chunk = c.recv(65536)
    if not chunk:
        break
    got += len(chunk)
print(json.dumps({"up": t1 - t0, "down": time.monotonic() - t1, "got": got}))
"""

PORT = 40000  # every agent's local UDP port (each host is its own namespace)
ECHO_PORT = 3478


class Agent:
    """The AGENT script running on a host; ``cmd`` sends one command and returns its JSON answer."""

    def __init__(self, host: Host, port: int = PORT) -> None:
        self.host, self.port = host, port
        self.proc = host.popen([sys.executable, "-c", AGENT, str(port)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.answer(10.0) == {"ready": True}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"agent on {self.host.name} silent for {timeout} s") from None
        assert line is not None, f"agent on {self.host.name} exited with {self.proc.wait(5)}"
        return dict(json.loads(line))

    def cmd(self, *words: object, timeout: float = 10.0) -> dict[str, Any]:
        self.send(*words)
        return self.answer(timeout)

    def probe(self, server: Agent) -> tuple[str, int]:
        mapped = self.cmd("probe", server.host.ip, server.port)["mapped"]
        assert mapped is not None, f"{self.host.name} got no answer from {server.host.name}"
        return mapped[0], int(mapped[1])


NATS = ("none", "port-restricted", "restricted", "full-cone", "symmetric")
SHORT = {"none": "pub", "port-restricted": "prc", "restricted": "rc", "full-cone": "fc", "symmetric": "sym"}


def test_each_nat_maps_the_client_to_its_public_address(lab: Lab) -> None:
    echo = Agent(lab.add_public_host("echo"), ECHO_PORT)
    for nat in NATS:
        host = lab.add_natted_host(SHORT[nat], nat)
        ip, port = Agent(host).probe(echo)
        assert ip == host.public_ip, f"{nat}: echo server saw {ip}, NAT's public address is {host.public_ip}"
        if nat == "none":
            assert host.ip == host.public_ip
        else:
            assert ip != host.ip and host.ip.startswith("192.168."), nat
        if nat != "symmetric":
            assert port == PORT, f"{nat}: Linux NAT should keep the source port, got {port}"


def test_cone_nats_map_endpoint_independently_symmetric_does_not(lab: Lab) -> None:
    s1 = Agent(lab.add_public_host("s1"), ECHO_PORT)
    s2 = Agent(lab.add_public_host("s2"), ECHO_PORT)
    s1b = Agent(s1.host, ECHO_PORT + 1)  # same server IP, other port
    for nat in ("port-restricted", "restricted", "full-cone", "symmetric"):
        agent = Agent(lab.add_natted_host(SHORT[nat], nat))
        m1, m2, m3 = agent.probe(s1), agent.probe(s2), agent.probe(s1b)
        if nat == "symmetric":
            assert len({m1[1], m2[1], m3[1]}) == 3, f"symmetric NAT reused a port: {m1} {m2} {m3}"
        else:
            assert m1 == m2 == m3, f"{nat} mapping depends on the destination: {m1} {m2} {m3}"


@pytest.mark.parametrize(
    ("nat", "from_third_host", "from_other_port"),
    [
        ("full-cone", True, True),
        ("restricted", False, True),
        ("port-restricted", False, False),
        ("symmetric", False, False),
    ],
)
def test_inbound_filtering(lab: Lab, nat: str, from_third_host: bool, from_other_port: bool) -> None:
    """After the client talks to s1:3478, who else can reach its mapped address?"""
    s1 = Agent(lab.add_public_host("s1"), ECHO_PORT)
    s1_other_port = Agent(s1.host, 5556)
    third = Agent(lab.add_public_host("third"), 5555)
    client = Agent(lab.add_natted_host("c", nat))
    ip, port = client.probe(s1)
    assert third.cmd("send", ip, port, 10, 0.02, "third") == {"sent": 10}
    assert s1_other_port.cmd("send", ip, port, 10, 0.02, "otherport") == {"sent": 10}
    received = client.cmd("drain", 0.3)["received"]
    tags = {payload.split()[1] for _, _, payload in received}
    assert ("third" in tags) == from_third_host, f"{nat}: unsolicited from a third host: {received}"
    assert ("otherport" in tags) == from_other_port, f"{nat}: from the known host's other port: {received}"
    # and the flow the client opened itself is always let through
    assert client.probe(s1) == (ip, port)


PUNCH_PAIRS = [
    ("port-restricted", "port-restricted", True),
    ("full-cone", "full-cone", True),
    ("full-cone", "port-restricted", True),
    ("restricted", "restricted", True),
    ("symmetric", "symmetric", False),
    ("port-restricted", "symmetric", False),
]


def test_simultaneous_open_hole_punching(lab: Lab) -> None:
    """All pairs punch at the same time in one lab; each side learns its address from the echo server first."""
    echo = Agent(lab.add_public_host("echo"), ECHO_PORT)
    pairs: list[tuple[str, str, bool, Agent, Agent, tuple[str, int], tuple[str, int]]] = []
    for i, (nat_a, nat_b, works) in enumerate(PUNCH_PAIRS):
        a = Agent(lab.add_natted_host(f"a{i}{SHORT[nat_a]}", nat_a))
        b = Agent(lab.add_natted_host(f"b{i}{SHORT[nat_b]}", nat_b))
        pairs.append((nat_a, nat_b, works, a, b, a.probe(echo), b.probe(echo)))
    for _, _, _, a, b, map_a, map_b in pairs:  # "rendezvous": each learns the other's reflexive address
        a.send("punch", *map_b, 2.0)
        b.send("punch", *map_a, 2.0)
    failures = []
    for nat_a, nat_b, works, a, b, map_a, map_b in pairs:
        got_a, got_b = a.answer()["punched"], b.answer()["punched"]
        if works and not (got_a and got_b):
            failures.append(f"{nat_a}<->{nat_b} should punch: a got {got_a}, b got {got_b}")
        if works and ([*map_b] not in got_a or [*map_a] not in got_b):
            failures.append(f"{nat_a}<->{nat_b}: packets not from the reflexive addresses: {got_a} {got_b}")
        if not works and (got_a or got_b):
            failures.append(f"{nat_a}<->{nat_b} should not punch: a got {got_a}, b got {got_b}")
    assert not failures, "\n".join(failures)


def test_loss_impairment(lab: Lab) -> None:
    sink = Agent(lab.add_public_host("sink"), ECHO_PORT)
    host = lab.add_natted_host("c", "port-restricted")
    client = Agent(host)
    client.probe(sink)

    lab.set_loss(host, 0.5)
    client.cmd("send", sink.host.ip, ECHO_PORT, 200, 0.001, "half")
    lab.set_loss(host, 1.0, "in")  # only the inbound direction: outbound must be untouched
    client.cmd("send", sink.host.ip, ECHO_PORT, 200, 0.001, "inonly")
    lab.set_loss(host, 0)
    client.cmd("send", sink.host.ip, ECHO_PORT, 200, 0.001, "none")
    sink.cmd("drain", 0.2)
    counts = sink.cmd("counts")["counts"]
    assert 50 <= counts.get("half", 0) <= 150, counts
    assert counts.get("inonly") == 200, counts
    assert counts.get("none") == 200, counts

    lab.set_loss(sink.host, 1.0, "in")  # a public host's own link
    client.cmd("send", sink.host.ip, ECHO_PORT, 20, 0.001, "blocked")
    assert sink.cmd("drain", 0.2)["received"] == []
    lab.set_loss(sink.host, 0)
    assert client.probe(sink) == (host.public_ip, PORT)


def test_rate_limit_both_directions(lab: Lab) -> None:
    server = lab.add_public_host("srv")
    host = lab.add_natted_host("c", "port-restricted")
    lab.set_rate(host, 8)
    nbytes = 400_000  # 0.4 s at 8 Mbit/s each way
    srv = server.popen([sys.executable, "-c", TCP_SERVER, "7000", str(nbytes)], stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
    out = host.run([sys.executable, "-c", TCP_CLIENT, server.ip, "7000", str(nbytes)],
                   capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["got"] == nbytes
    # sendall returns once data is queued, so allow for socket buffers on the way up (about 0.4 s expected)
    assert result["up"] + result["down"] > 0.5, result
    assert result["down"] > 0.25, result
    lab.set_rate(host, None)
    assert srv.wait(10) == 0


def test_move_host_changes_the_public_address(lab: Lab) -> None:
    echo = Agent(lab.add_public_host("echo"), ECHO_PORT)
    natted = lab.add_natted_host("c", "port-restricted")
    public = lab.add_public_host("p")
    for host in (natted, public):
        agent = Agent(host)
        old = host.public_ip
        assert agent.probe(echo) == (old, PORT)
        new = lab.move_host(host)
        assert new != old and host.public_ip == new
        assert agent.probe(echo) == (new, PORT), f"{host.name}: same socket, new address"
    assert natted.ip.startswith("192.168.") and public.ip == public.public_ip


def test_teardown_leaves_nothing() -> None:
    ok, reason = netns_available()
    if not ok:
        pytest.skip(reason)
    lab = Lab(stop_timeout=0.5)
    with lab:
        host = lab.add_natted_host("c", "symmetric")
        server = lab.add_public_host("s")
        lab.set_loss(host, 0.1)
        lab.set_rate(server, 50)
        sleeper = host.popen(["sleep", "600"])
        ignore_term = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('x', flush=True)\n"
        ignore_term += "time.sleep(600)"
        ignorer = server.popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE, text=True)
        assert ignorer.stdout is not None and ignorer.stdout.readline() == "x\n"
        assert len([n for n in _netns() if n.startswith(lab.prefix)]) == 4
    assert sleeper.poll() is not None and ignorer.poll() is not None
    assert lab.killed == [ignorer.pid]  # SIGTERM ended the sleeper, the ignorer needed SIGKILL
    assert [n for n in _netns() if n.startswith(lab.prefix)] == []
    assert lab.leftovers() == []

    # also when the test body fails half-way
    failing = Lab()
    with pytest.raises(ZeroDivisionError), failing:
        failing.add_natted_host("a", "full-cone")
        failing.add_public_host("b").popen(["sleep", "600"])
        _ = 1 / 0
    assert failing.leftovers() == []
    with pytest.raises(LabError):
        failing.add_public_host("c").popen(["true"])


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
