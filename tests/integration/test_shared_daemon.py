"""A daemon shared by a lab: --auth-group lets a second unix user (a fresh uid in the group) use it;
--api-host serves HTTPS with a certificate clients pin, and a client refuses any other certificate.

Tests run as root: the second user is a subprocess with setuid/setgid to an unused uid/gid (no
account is created). Everything lives in a temp dir other users can traverse, removed at the end.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import DaemonFactory, environ_applied

import kachery_p2p as kp
from kachery_p2p.client.http import ControlClient
from kachery_p2p.config import client_config_from_environ
from kachery_p2p.errors import DaemonAuthError, UsageError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")


def _unused(ids: set[int], start: int = 61000) -> int:
    return next(i for i in range(start, start + 5000) if i not in ids)


@pytest.fixture
def shared_factory() -> Iterator[DaemonFactory]:
    base = Path(tempfile.mkdtemp(prefix="kp2p-shared-", dir="/tmp"))
    base.chmod(0o755)
    factory = DaemonFactory(base)
    try:
        yield factory
    finally:
        killed = factory.close()
        shutil.rmtree(base, ignore_errors=True)
    assert not killed


def _client_work() -> str:
    uri = kp.store_text("from the second user")
    return "\n".join([kp.get_node_id(), uri, str(kp.load_text(uri))])


def _ask_daemon_to_read(secret: Path) -> str:
    """What a member could try: make the daemon read, by path, a file only its owner may read."""
    client = ControlClient(client_config_from_environ())
    stored = client.post_json("/store", {"path": str(secret), "name": "s"})
    try:
        linked = str(client.post_json("/link", {"path": str(secret), "name": "s"}))
    except UsageError as exc:
        linked = f"refused: {exc}"
    return json.dumps({"store": stored, "link": linked})


def _as_user(
    uid: int, gid: int, groups: list[int], env: dict[str, str], work: Callable[[], str] = _client_work
) -> tuple[bool, str]:
    """Run _client_work in a forked child with another uid/gid/groups (no exec: the venv's python lives
    under /root, which other users cannot reach); (succeeded, output or 'ExcType: message')."""
    with environ_applied(env):  # as root first: every module the work needs is imported before the fork
        work()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.environ.update(env)
            os.write(write_end, ("ok\n" + work()).encode())
            code = 0
        except BaseException as exc:
            os.write(write_end, f"error\n{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while block := os.read(read_end, 65536):
        chunks.append(block)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    head, _, rest = b"".join(chunks).decode().partition("\n")
    return os.waitstatus_to_exitcode(status) == 0 and head == "ok", rest


def test_auth_group_member_uses_the_daemon(shared_factory: DaemonFactory) -> None:
    used_gids = {g.gr_gid for g in grp.getgrall()}
    auth_gid = _unused(used_gids)
    other_gid = _unused(used_gids | {auth_gid})
    uid = _unused({p.pw_uid for p in pwd.getpwall()})
    a = shared_factory.start("lab", ["--auth-group", str(auth_gid)])
    token = a.token_path.stat()
    assert stat.S_IMODE(token.st_mode) == 0o640 and token.st_gid == auth_gid
    config = a.config_dir.stat()
    assert stat.S_IMODE(config.st_mode) == 0o710 and config.st_gid == auth_gid
    # The node key stays the owner's alone.
    assert stat.S_IMODE((a.config_dir / "private.pem").stat().st_mode) == 0o600

    ok, output = _as_user(uid, other_gid, [auth_gid], a.env)
    assert ok, output
    node_id, uri, text = output.splitlines()
    assert node_id == a.node_id and uri.startswith("sha1://") and text == "from the second user"
    assert a.api("load_text", uri) == "from the second user"

    # The daemon does not read, for a member, a file the group could not read itself.
    secret = a.root / "owner-only" / "id_key"
    secret.parent.mkdir(mode=0o700)
    secret.write_text("the owner's secret")
    ok, output = _as_user(uid, other_gid, [auth_gid], a.env, lambda: _ask_daemon_to_read(secret))
    assert ok, output
    answer = json.loads(output)
    assert answer["store"] == {"needUpload": True} and answer["link"].startswith("refused: cannot link")
    assert a.api("load_text", f"sha1://{hashlib.sha1(secret.read_bytes()).hexdigest()}", p2p=False) is None

    ok, output = _as_user(uid, other_gid, [], a.env)
    assert not ok and output.startswith("DaemonAuthError: cannot read the daemon token"), output


def test_bad_auth_group_is_one_line(shared_factory: DaemonFactory) -> None:
    handle = shared_factory.new("badgroup")
    result = handle.cli("start-daemon", "--port", "0", "--no-lan-discovery", "--auth-group", "no-such-group-xyz")
    assert result.returncode != 0 and "no group named" in result.stderr and "Traceback" not in result.stderr


def test_api_host_https_is_pinned(shared_factory: DaemonFactory) -> None:
    a = shared_factory.start("https-a", ["--api-host", "127.0.0.2"])
    b = shared_factory.start("https-b", ["--api-host", "127.0.0.2"])
    fingerprint = (a.config_dir / "api-cert-sha256").read_text().strip()
    assert len(fingerprint) == 64
    remote = {**a.env, "KACHERY_P2P_API_HOST": "127.0.0.2"}
    with environ_applied(remote):
        assert kp.get_node_id() == a.node_id
        uri = kp.store_text("over https")
        assert kp.load_text(uri) == "over https"
        # A remote client's files are not the daemon's: store_file sends the bytes.
        local_file = Path(tempfile.mkdtemp(dir=a.root)) / "mine.txt"
        local_file.write_text("a client file")
        assert kp.load_text(kp.store_file(str(local_file))) == "a client file"
    # Local clients still use loopback HTTP, unchanged.
    assert a.api("load_text", uri) == "over https"
    # B presents another certificate: a client pinning A's refuses it before sending the token.
    wrong = {**remote, "KACHERY_P2P_API_PORT": str(b.api_port)}
    with environ_applied(wrong), pytest.raises(DaemonAuthError, match="not the pinned"):
        kp.get_node_id()
    # Without a pin there is no HTTPS at all.
    (a.config_dir / "api-cert-sha256").unlink()
    with environ_applied(remote), pytest.raises(DaemonAuthError, match="fingerprint"):
        kp.get_node_id()
    a.stop()
    assert not a.token_path.exists()


def test_api_host_must_be_specific(shared_factory: DaemonFactory) -> None:
    handle = shared_factory.new("wild")
    result = handle.cli("start-daemon", "--port", "0", "--no-lan-discovery", "--api-host", "0.0.0.0")
    assert result.returncode != 0 and "--api-host" in result.stderr and "Traceback" not in result.stderr
