"""The plain HTTP pages ``wslifecycle serve`` adds by flag, in one place for
every driver: ``--dashboard`` (the operator's page, ``dashboard.py``) and
``--serve-client`` (the browser module, ``browser_client.py``)."""

from __future__ import annotations

import argparse

from wslifecycle.hub import Hub

from . import browser_client, dashboard

__all__ = ["add_pages", "announce_pages"]


def add_pages(args: argparse.Namespace, hub: Hub) -> None:
    """Add the pages the flags ask for to ``hub`` (on the selector driver,
    with the server's lock held)."""
    if args.dashboard:
        dashboard.add_page(hub)
    if args.serve_client:
        browser_client.add_page(hub)


def announce_pages(args: argparse.Namespace, address: tuple[str, int] | None) -> None:
    """Their addresses on stdout, after the serving line (none on a unix socket)."""
    if address is None:
        return
    if args.dashboard:
        dashboard.announce(*address)
    if args.serve_client:
        browser_client.announce(*address)
