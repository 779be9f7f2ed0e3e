"""Which addresses a TCP port listens on, and which processes hold it, read from the kernel's
socket tables and ``/proc`` (Linux)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

LISTEN = "0A"


def _ipv4(hex_address: str) -> str:
    return str(ipaddress.IPv4Address(bytes.fromhex(hex_address)[::-1]))


def _ipv6(hex_address: str) -> str:
    # Four 32-bit words, each in the host's (little-endian) byte order.
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening_sockets(port: int) -> dict[int, str]:
    """Every socket listening on ``port``: its inode and its local address (``0.0.0.0`` /
    ``::`` mean every interface)."""
    found = {}
    for table, decode in (("/proc/net/tcp", _ipv4), ("/proc/net/tcp6", _ipv6)):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] == LISTEN and int(hex_port, 16) == port:
                found[int(fields[9])] = decode(address)
    return found


def listening_addresses(port: int) -> set[str]:
    """Every local address with a socket listening on ``port`` (``0.0.0.0`` / ``::`` mean
    every interface)."""
    return set(listening_sockets(port).values())


def port_holders(port: int) -> list[str]:
    """Who listens on ``port``, in words: ``pid 123 (python -m http.server) on 0.0.0.0`` for
    each listening socket, or the address alone where its process cannot be seen (another
    user's, another network namespace's)."""
    sockets = listening_sockets(port)
    owners: dict[int, str] = {}
    wanted = {f"socket:[{inode}]": inode for inode in sockets}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                inode = wanted.get(os.readlink(fd))
                if inode is not None and inode not in owners:
                    command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
                    owners[inode] = f"pid {proc.name} ({command.decode(errors='replace')})"
        except OSError:
            continue
    return [
        f"{owners.get(inode, 'an unknown process')} on {address}"
        for inode, address in sorted(sockets.items())
    ]
