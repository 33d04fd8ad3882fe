"""Ports for a baseline's listeners and services: distinct within one choice, none of those to avoid."""

from __future__ import annotations

import socket

from bot.runtimes.local.ports import free_ports


def test_one_choice_never_repeats_a_port_and_each_is_bindable() -> None:
    # Chosen one at a time with the probe socket closed in between, the kernel may hand a port out
    # again; a baseline whose two listeners got one port failed to start.
    for _ in range(20):
        ports = free_ports(50)
        assert len(set(ports)) == 50
    for port in free_ports(5):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_ports_to_avoid_are_never_chosen() -> None:
    listeners = set(free_ports(30))
    for _ in range(20):
        assert listeners.isdisjoint(free_ports(30, avoid=listeners))
