"""The ``ip`` kit: a switchable IPv4 address (the seed's IP resource).

The address moves with its hierarchy: ``restore`` probes the network for another owner
(ARP, as ``arping -D``), adds the address to the server's interface over netlink and
announces it by gratuitous ARP (at once, and again a second later in the background);
``remove`` deletes it. The interface is chosen per server (the seed's *Network
Connection*): it must already have an address in a subnet that contains the switchable
address, and ``can_extend`` proposes the one that has on the target. An optional backup
interface takes the address when the interface's link is down; the deep check pings a
list of addresses from the switchable one.

Modules: ``properties`` (what an administrator gives), ``validation`` (the checks, pure),
``netlink`` (links and addresses, async pyroute2), ``arp`` (probe and announcements on a
packet socket), ``kit`` (the actions). Guide: ``docs/kits/ip.md``.
"""

from vigil.kits.ip.kit import IpKit
from vigil.kits.ip.properties import IpProperties, netmask_to_prefix

__all__ = ["IpKit", "IpProperties", "netmask_to_prefix"]
