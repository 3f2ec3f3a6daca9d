"""Where a driver's ``serve`` listens, checked before anything is bound.

Every driver's ``serve`` takes the same address arguments:

* ``host`` and ``port``: a TCP listener (``port`` 0 picks a free one);
* or ``unix_path``: a unix domain socket instead (``port`` must be absent);
* ``metrics_port``: a second TCP listener on ``host`` that answers only
  ``/healthz`` and ``/metrics`` (so with ``unix_path``, ``host`` is where
  that one listens, and is required by it).

Bad arguments raise before any socket exists (:func:`check_address`), and an
operating-system refusal names the call and the address instead of the
driver's internals (:func:`listen_error`):
``serve(): cannot listen on 127.0.0.1:8765: [Errno 98] Address already in use``.

A unix socket's file (:func:`listen_unix`): a stale one left by an earlier
run is replaced, but never a live server's, nor anything that is not a
socket; the file is removed when the server stops, if it is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Callable

__all__ = ["CALL", "check_address", "listen_error", "listen_unix", "tcp_where"]

#: How errors name the user's call.
CALL = "serve()"


def check_address(
    host: str | None,
    port: int | None,
    unix_path: str | os.PathLike[str] | None,
    metrics_port: int | None,
) -> str | None:
    """Check ``serve``'s address arguments (ValueError or TypeError naming
    the argument); returns ``unix_path`` as a str (None: TCP)."""
    for name, value in (("port", port), ("metrics_port", metrics_port)):
        if value is not None:
            check_port(name, value)
    if host is not None and not isinstance(host, str):
        raise TypeError(f"{CALL}: host must be a str, got {host!r}")
    if unix_path is None:
        if host is None or port is None:
            raise ValueError(f"{CALL}: give host and port (TCP), or unix_path")
        return None
    path = os.fspath(unix_path)
    if not isinstance(path, str):
        raise TypeError(f"{CALL}: unix_path must be a str or a path, got {unix_path!r}")
    if not path:
        raise ValueError(f"{CALL}: unix_path must not be empty")
    if port is not None:
        raise ValueError(f"{CALL}: give port or unix_path, not both")
    if metrics_port is not None and host is None:
        raise ValueError(f"{CALL}: metrics_port needs host (where the metrics listener binds)")
    if metrics_port is None and host is not None:
        raise ValueError(f"{CALL}: host is unused with unix_path unless metrics_port is given")
    return path


def check_port(name: str, port: object) -> None:
    """A TCP port: an int from 0 (any free port) to 65535."""
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"{CALL}: {name} must be an int, got {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"{CALL}: {name} must be from 0 to 65535, got {port}")


def tcp_where(host: str, port: int, name: str = "port") -> str:
    """``host:port`` as an error names it (IPv6 in brackets; which argument
    unless it is ``port``)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return where if name == "port" else f"{where} ({name})"


def listen_error(error: OSError, where: str) -> OSError:
    """``error`` (from bind, listen or resolving the host), as the same kind
    of OSError with the same errno, whose message names the call and
    ``where``: raise it ``from error``."""
    if error.errno is not None and not isinstance(error, socket.gaierror):
        # The standard wording: asyncio rewrites it into a long sentence.
        reason = f"[Errno {error.errno}] {os.strerror(error.errno)}"
    else:
        reason = str(error)
    named = type(error)(f"{CALL}: cannot listen on {where}: {reason}")
    named.errno = error.errno  # kept apart from the message: str() stays ours
    return named


def listen_unix(path: str, backlog: int) -> tuple[socket.socket, Callable[[], None]]:
    """A listening unix socket bound to ``path``, and the function that
    removes its file (only if the file is still this socket's)."""
    where = f"unix socket {path}"
    abstract = path.startswith("\0")  # Linux: no file behind it
    if not abstract:
        _remove_stale(path, where)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
        inode = None if abstract else os.stat(path).st_ino
    except OSError as error:
        sock.close()
        raise listen_error(error, where) from error

    def remove() -> None:
        if inode is not None:
            with contextlib.suppress(OSError):  # gone already, or not ours to remove
                if os.lstat(path).st_ino == inode:
                    os.unlink(path)

    return sock, remove


def _remove_stale(path: str, where: str) -> None:
    """Remove the socket file an earlier run left at ``path``; refuse a
    file that is not a socket, and a socket a live server listens on."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise listen_error(error, where) from error
    if not stat.S_ISSOCK(mode):
        exists = FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
        raise listen_error(exists, f"{where} (it is not a socket)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a live server with a full backlog must not block us
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens
        return
    except BlockingIOError:
        pass  # live, its backlog full
    except OSError as error:
        raise listen_error(error, where) from error
    finally:
        probe.close()
    in_use = OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    raise listen_error(in_use, f"{where} (another server listens there)")
