"""ARP for the ip kit: duplicate address detection and gratuitous announcements.

Both speak ARP directly on an ``AF_PACKET`` socket bound to one interface, on the running
event loop (non-blocking; the socket lives in the calling thread's network namespace):

* ``probe`` sends ARP probes (RFC 5227: sender address 0.0.0.0, target the address) and
  listens ``PROBE_WAIT`` seconds (the resource's ``probe_wait``) for anyone answering for
  the address. This is what ``arping -D`` does, but ``arping`` cannot wait less than a
  whole second, and every restore pays for the wait. On a LAN a host answers an ARP
  request within a millisecond or two (its kernel does, whatever its load), so 0.1 s
  with three probes still finds another owner; RFC 5227's 1-2 s waits are for links where
  hosts join slowly, and a resource on such a network raises ``probe_wait``. An answer
  aborts the restore before the address is added, exactly as with a longer wait.
* ``announce`` sends one gratuitous ARP request (as ``arping -U``) and one gratuitous
  reply (as ``arping -A``), so that neighbours replace the address's old hardware
  address at once: without it a client in another namespace could not reach a moved
  address for 42 s (LAB-NOTES, "Addresses").
* ``Announcer`` repeats the announcement ``ANNOUNCE_AGAIN`` seconds later in a background
  task (a lost first announcement costs a second, not a minute); restore does not wait
  for it, remove cancels it.

No process is started, so nothing can be left behind. Sending raw frames needs
``CAP_NET_RAW`` (the agent runs as root); without it the kit raises ``KitError`` FATAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Address

from vigil.errors import KitError, Severity

__all__ = ["ANNOUNCE_AGAIN", "PROBE_COUNT", "PROBE_WAIT", "Announcer", "announce", "probe"]

#: seconds a duplicate-address probe listens for another owner of the address (default)
PROBE_WAIT = 0.1
#: probes sent during the wait (spread evenly), in case one is lost
PROBE_COUNT = 3
#: seconds after the first announcement when it is repeated in the background
ANNOUNCE_AGAIN = 1.0

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ARP_REPLY = 2
_BROADCAST = b"\xff" * 6
_ZERO_MAC = b"\x00" * 6
_ZERO_IP = IPv4Address("0.0.0.0")
_ETH_HEADER = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


def _frame(
    op: int, mac: bytes, sender: IPv4Address, target_mac: bytes, target: IPv4Address
) -> bytes:
    arp = _ARP.pack(1, ETH_P_IP, 6, 4, op, mac, sender.packed, target_mac, target.packed)
    return _ETH_HEADER.pack(_BROADCAST, mac, ETH_P_ARP) + arp


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@contextlib.contextmanager
def _arp_socket(ifname: str) -> Iterator[tuple[socket.socket, bytes]]:
    """A non-blocking ARP socket bound to ``ifname``, and the interface's hardware address."""
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    except PermissionError as exc:
        raise KitError(
            f"cannot send ARP on {ifname}: {exc.strerror}; the agent needs CAP_NET_RAW "
            "(run it as root)",
            Severity.FATAL,
        ) from exc
    except OSError as exc:
        raise KitError(f"cannot open an ARP socket on {ifname}: {exc}", Severity.HARD) from exc
    with sock:
        try:
            sock.bind((ifname, ETH_P_ARP))
        except OSError as exc:
            raise KitError(
                f"cannot send ARP on {ifname}: {exc.strerror or exc}", Severity.HARD
            ) from exc
        sock.setblocking(False)
        yield sock, bytes(sock.getsockname()[4][:6])


def _owner(data: bytes, where: tuple[object, ...], ifname: str, ip: IPv4Address) -> bytes | None:
    """The sender's hardware address if ``data`` is an ARP packet received on ``ifname``
    from a host that claims ``ip``, else None."""
    if where[0] != ifname or where[2] == socket.PACKET_OUTGOING:
        return None
    if len(data) < _ETH_HEADER.size + _ARP.size:
        return None
    ethertype = _ETH_HEADER.unpack_from(data)[2]
    if ethertype != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op, sha, spa, _, _ = _ARP.unpack_from(data, _ETH_HEADER.size)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (ARP_REQUEST, ARP_REPLY):
        return None
    return bytes(sha) if spa == ip.packed else None


async def probe(
    ifname: str, ip: IPv4Address, own_macs: set[str], wait: float = PROBE_WAIT
) -> str | None:
    """The hardware address of another host answering for ``ip`` on ``ifname`` within
    ``wait`` seconds, or None when nobody does. Answers from ``own_macs`` (this server's
    own interfaces, which answer for its own addresses) do not count."""
    loop = asyncio.get_running_loop()
    with _arp_socket(ifname) as (sock, mac):
        frame = _frame(ARP_REQUEST, mac, _ZERO_IP, _ZERO_MAC, ip)
        start = loop.time()
        deadline = start + wait
        sends = [start + wait * i / PROBE_COUNT for i in range(PROBE_COUNT)]
        while True:
            now = loop.time()
            while sends and sends[0] <= now:
                sends.pop(0)
                await loop.sock_sendall(sock, frame)
            if now >= deadline:
                return None
            try:
                async with asyncio.timeout_at(min([deadline, *sends[:1]])):
                    data, where = await loop.sock_recvfrom(sock, 2048)
            except TimeoutError:
                continue
            sender = _owner(data, where, ifname, ip)
            if sender is not None and _mac_text(sender) not in own_macs:
                return _mac_text(sender)


async def announce(ifname: str, ip: IPv4Address) -> None:
    """Send a gratuitous ARP request and reply for ``ip`` from ``ifname``'s address."""
    loop = asyncio.get_running_loop()
    with _arp_socket(ifname) as (sock, mac):
        await loop.sock_sendall(sock, _frame(ARP_REQUEST, mac, ip, _ZERO_MAC, ip))
        await loop.sock_sendall(sock, _frame(ARP_REPLY, mac, ip, mac, ip))


class Announcer:
    """The background repetitions of announcements, at most one per resource tag.

    Tasks are kept here (a strong reference, so they are not collected mid-flight) and
    belong to the event loop that started them."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(
        self,
        tag: str,
        ifname: str,
        ip: IPv4Address,
        still_there: Callable[[], Awaitable[bool]],
        log: Logger,
    ) -> None:
        """Announce ``ip`` on ``ifname`` again ``ANNOUNCE_AGAIN`` seconds from now, if
        ``still_there()`` then says the address is still configured there. Replaces a
        pending repetition for ``tag``."""
        self.cancel(tag)
        task = asyncio.create_task(
            self._again(tag, ifname, ip, still_there, log), name=f"vigil-ip-announce-{tag}"
        )
        self._tasks[tag] = task
        task.add_done_callback(lambda done: self._forget(tag, done))

    def pending(self, tag: str) -> bool:
        """Whether a repetition for ``tag`` is still to come."""
        task = self._tasks.get(tag)
        return task is not None and not task.done()

    def cancel(self, tag: str) -> asyncio.Task[None] | None:
        """Cancel the pending repetition for ``tag``; returns the task (await it to be
        sure it has ended), or None when there was none."""
        task = self._tasks.pop(tag, None)
        if task is not None:
            task.cancel()
        return task

    async def stop(self, tag: str) -> None:
        """Cancel the pending repetition for ``tag`` and wait until it has ended."""
        task = self.cancel(tag)
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait((task,))  # the caller's own cancellation still goes through

    def _forget(self, tag: str, done: asyncio.Task[None]) -> None:
        if self._tasks.get(tag) is done:
            del self._tasks[tag]

    @staticmethod
    async def _again(
        tag: str,
        ifname: str,
        ip: IPv4Address,
        still_there: Callable[[], Awaitable[bool]],
        log: Logger,
    ) -> None:
        await asyncio.sleep(ANNOUNCE_AGAIN)
        try:
            if await still_there():
                await announce(ifname, ip)
                log.debug("%s: announced %s on %s again", tag, ip, ifname)
        except KitError as exc:
            log.warning("%s: repeating the announcement of %s failed: %s", tag, ip, exc)
