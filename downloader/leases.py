"""Whether this engine still holds an image's lease when it is about to publish the file.

Another engine takes an image over only once its lease has expired, or once its engine was
reaped as dead. An engine stalled past its lease (a suspended VM, a stopped process) can still
finish that download afterwards; publishing it then would overwrite the new owner's file at
the same storage key with bytes the database does not describe (the stale result itself is
never recorded: queue.record_results checks the lease). So before publishing, the engine asks
`LeaseBook.safe`: yes while the lease, as last written by the claim or by a heartbeat that
found the image still ours, runs for at least a third of a lease more. Otherwise the engine
renews that one lease in the database first (queue.renew_lease) and drops the download if the
image is no longer its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from downloader.queue import Claim


@dataclass(frozen=True, slots=True)
class Renewal:
    """What one heartbeat renewed: the images it found still ours, now leased until `until`."""

    until: float
    image_ids: frozenset[int]


class LeaseBook:
    """The leases as this engine last wrote them (claims and heartbeats), checked in memory."""

    def __init__(self, lease_seconds: float) -> None:
        # A heartbeat runs every third of a lease, so a held lease never gets this close to
        # its end unless heartbeats stalled; a publish (a rename, an upload) fits in it.
        self.margin = lease_seconds / 3
        self._renewal: Renewal | None = None

    def renewed(self, renewal: Renewal) -> None:
        self._renewal = renewal

    def safe(self, claim: Claim, now: float) -> bool:
        """True when `claim` is certainly still this engine's for a while; False means: ask
        the database (the lease may be gone, or merely old)."""
        until = claim.leased_until
        renewal = self._renewal
        if renewal is not None and renewal.until > until:  # a heartbeat after the claim
            if claim.image_id not in renewal.image_ids:
                return False  # which did not find the image ours
            until = renewal.until
        return until - now > self.margin
