"""A real nginx for tests: where it is, and a whole nginx.conf a non-root
user can run around the ``http`` block a test gives (one process in the
foreground, every file under the test's own directory)."""

from __future__ import annotations

import pathlib
import shutil
import socket
import subprocess
import time

__all__ = ["NGINX", "listening", "nginx_conf"]

#: The nginx binary (/usr/sbin may be off a user's PATH); None: not installed.
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def nginx_conf(tmp: pathlib.Path, port: int, http_block: str, *, connections: int = 256) -> str:
    """nginx.conf with ``http_block`` inside ``http { }``; pid, logs and
    temporary files in ``tmp``."""
    return f"""
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/error.log notice;
events {{ worker_connections {connections}; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{http_block}
}}
"""


def listening(port: int, process: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``process`` accepts on ``port`` within ``timeout``; False as
    soon as it has exited (the port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.02)  # polling for readiness, bounded by the deadline
        else:
            return True
    return False
