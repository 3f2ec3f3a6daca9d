"""A real nginx for tests: where it is, and a whole nginx.conf a non-root
user can run around the ``http`` block a test gives (one process in the
foreground, every file under the test's own directory)."""

from __future__ import annotations

import pathlib
import shutil

__all__ = ["NGINX", "nginx_conf"]

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
