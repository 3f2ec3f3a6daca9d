"""``wslifecycle probe``'s refusals: a usage error is one line and exit 2,
before any connection; a server it cannot reach or that refuses is one
line and exit 2 too."""

from __future__ import annotations

import pathlib
import socket

import pytest
import trustme

from tests.probe.servers import probe, running, wsl_serve
from wslifecycle.drivers import cli


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def exit_status(argv: list[str]) -> int:
    """``cli.main`` in-process: argparse's refusals raise SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else -1


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: URL"),
        (["http://127.0.0.1/"], "argument URL: 'http://127.0.0.1/': the scheme must be ws or wss"),
        (["ws://h/", "--silent", "3"], "--silent needs --after SECONDS"),
        (["ws://h/", "--after", "1"], "--after applies to silent clients"),
        (["ws://h/", "--healthy", "-1"], "argument --healthy: must be 0 or more, got -1"),
        (["ws://h/", "--silent", "-2", "--after", "1"], "argument --silent: must be 0 or more"),
        (["ws://h/", "--silent", "1", "--after", "-1"], "argument --after: must be a finite"),
        (["ws://h/", "--timeout", "-3"], "argument --timeout: must be a finite number above 0"),
        (["ws://h/", "--expect-bound", "0"], "argument --expect-bound: must be a finite number"),
        (["ws://h/", "--timeout", "nan"], "argument --timeout: must be a finite number"),
        (["ws://h/", "--concurrency", "0"], "argument --concurrency: must be at least 1"),
        (["ws://h/", "--healthy", "0"], "nothing to probe"),
        (["ws://h/", "--timeout", "2", "--expect-bound", "3"], "--timeout (2) must exceed"),
        (["ws://h/", "--insecure"], "--insecure and --cafile apply to wss:// URLs only"),
        (["wss://h/", "--insecure", "--cafile", "x"], "not allowed with argument --insecure"),
        (["ws://h/", "--header", "no colon"], "argument --header: must be 'Name: value'"),
        (["ws://h/", "--header", "Upgrade: h2c"], "header 'Upgrade' is the handshake's own"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(["probe", *argv]) == 2
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert line.startswith("wslifecycle probe: error: ")
    assert says in line
    assert line.endswith("(see wslifecycle probe --help)")
    assert captured.out == ""


def test_a_server_that_cannot_be_reached_exits_2() -> None:
    """Nothing listens on the port (bound, not listening: connections are refused)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        done = probe(f"ws://127.0.0.1:{port}/", "--healthy", "3")
    assert (done.returncode, done.stdout) == (2, "")
    assert one_line(done.stderr) == (
        f"wslifecycle probe: ws://127.0.0.1:{port}/: cannot connect:"
        " [Errno 111] Connection refused (0 of 3 were open)"
    )


def test_a_refused_upgrade_exits_2(tmp_path: pathlib.Path) -> None:
    """wslifecycle serve refuses clients without an allowed Origin: 403;
    --origin sends the allowed one."""
    server = wsl_serve("--heartbeat-interval", "0.5", "--allow-origin", "https://app.example")
    with running(server, tmp_path) as port:
        url = f"ws://127.0.0.1:{port}/"
        refused = probe(url, "--healthy", "2", "--timeout", "0.3")
        allowed = probe(
            url, "--healthy", "2", "--timeout", "0.3", "--origin", "https://app.example"
        )
    assert refused.returncode == 2
    assert "the server refused the upgrade: HTTP 403" in one_line(refused.stderr)
    assert (allowed.returncode, allowed.stderr) == (0, "")
    assert "| healthy clients closed by the server | 0 of 2 |" in allowed.stdout


def test_wss_with_a_cafile_and_an_unverified_certificate(tmp_path: pathlib.Path) -> None:
    """wss://: the certificate verified against --cafile, or not at all with
    --insecure; without either a self-signed test certificate is refused
    (exit 2, naming the verification failure)."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "cert.pem")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    server = wsl_serve(
        "--heartbeat-interval", "0.5", "--allow-no-origin", "--certfile", str(tmp_path / "cert.pem")
    )
    clients = ("--healthy", "3", "--silent", "3", "--after", "0.5", "--expect-bound", "2.5")
    with running(server, tmp_path) as port:
        url = f"wss://127.0.0.1:{port}/"
        verified = probe(url, *clients, "--cafile", str(tmp_path / "ca.pem"))
        insecure = probe(url, *clients, "--insecure")
        refused = probe(url, "--healthy", "1")
    for done in (verified, insecure):
        assert (done.returncode, done.stderr) == (0, "")
        assert "| silent clients terminated (silent after 0.5 s) | 3 of 3 |" in done.stdout
    assert refused.returncode == 2
    assert one_line(refused.stderr) == (
        f"wslifecycle probe: {url}: cannot connect: TLS: certificate verify failed:"
        " unable to get local issuer certificate (0 of 1 were open)"
    )
