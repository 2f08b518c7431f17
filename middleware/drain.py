"""OutboxDrainer: one claim at a time from the outbox into the store, run by the writer thread.

Each call of :meth:`OutboxDrainer.drain_once` claims up to a batch of entries, checks each
(:func:`~middleware.outbox.parse_entry`), delivers the good ones (:class:`~middleware.delivery.
Delivery`) and settles the claim in one Redis transaction:

* an entry that is not an event goes to the dead letters at once, with the reason;
* an event the store rejects, and for which no replacement could be written either (an unknown
  tenant, say), goes to the dead letters too: an operator may fix its cause and requeue it;
* when the store cannot be reached every good entry goes back to the list, unchanged;
* when a delivery failed for any other reason (the store raised something unexpected on this
  batch), the entries go back with ``_tries`` counted, and one tried ``max_tries`` times goes to
  the dead letters: no entry can hold up the others for more than a few drains.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass

from .delivery import Delivery, StoreUnavailable
from .errors import TransientStoreError
from .events import StatusEvent
from .outbox import BadEntry, Claim, RedisOutbox, entry_with_tries, parse_entry
from .sync_metrics import SyncMetrics

logger = logging.getLogger(__name__)

#: the failure reason of a delivery that counts one try against each entry of the claim: the
#: store raised something unexpected on it (an outage, or a store refusing every batch until an
#: operator fixes it, counts nothing)
UNEXPECTED = "error"


class Drained(enum.Enum):
    EMPTY = "empty"  # nothing to claim
    SOME = "some"  # a claim was settled
    STORE_DOWN = "store_down"  # the store could not take the claim: it is back in the list
    OUTBOX_DOWN = "outbox_down"  # Redis did not answer


@dataclass
class DrainResult:
    state: Drained
    entries: int = 0  # entries in the claim
    delivered: int = 0  # entries the store answered for (good events of a settled claim)
    reason: str | None = None  # STORE_DOWN: why the store could not take the claim


class OutboxDrainer:
    """Drains ``outbox`` into the store through ``delivery`` (see the module docstring)."""

    def __init__(self, outbox: RedisOutbox, delivery: Delivery, *, max_tries: int = 3) -> None:
        self.outbox = outbox
        self.delivery = delivery
        self.max_tries = max_tries

    def drain_once(self, metrics: SyncMetrics, count: int) -> DrainResult:
        """Claim up to ``count`` entries and settle them (one round trip to the store)."""
        try:
            claim = self.outbox.take(count)
        except TransientStoreError:
            return DrainResult(Drained.OUTBOX_DOWN)
        if claim.key is None:
            return DrainResult(Drained.EMPTY)
        good: list[tuple[bytes, StatusEvent, int]] = []
        dead: list[tuple[bytes, str]] = []
        for raw in claim.raw:
            try:
                event, tries = parse_entry(raw)
            except BadEntry as exc:
                dead.append((raw, exc.reason))
                continue
            good.append((raw, event, tries))
        put_back: list[bytes | str] = []
        state = Drained.SOME
        reason = None
        try:
            outcomes = self.delivery.deliver(metrics, [event for _raw, event, _tries in good], retry=False)
        except StoreUnavailable as exc:
            reason = exc.reason
            if exc.reason != UNEXPECTED:
                put_back = [raw for raw, _event, _tries in good]
                state = Drained.STORE_DOWN
            else:  # counted against each entry, so that none can stall the drain for good
                for raw, event, tries in good:
                    if tries + 1 >= self.max_tries:
                        dead.append((raw, f"failing: {exc.reason} on {tries + 1} drains"))
                    else:
                        put_back.append(entry_with_tries(event, tries + 1))
                state = Drained.STORE_DOWN
        else:
            for (raw, _event, _tries), outcome in zip(good, outcomes, strict=True):
                if outcome.rejected:
                    dead.append((raw, f"rejected: {outcome.reason}"))
        self._settle(metrics, claim, put_back, dead)
        return DrainResult(state, len(claim), 0 if state is Drained.STORE_DOWN else len(good), reason)

    def _settle(
        self, metrics: SyncMetrics, claim: Claim, put_back: list[bytes | str], dead: list[tuple[bytes, str]]
    ) -> None:
        for raw, reason in dead:
            metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()
            logger.error(
                "Outbox entry moved to the dead letters: %s.",
                reason,
                extra={"action": "outbox_dead_letter", "reason": reason, "bytes": len(raw)},
            )
        try:
            self.outbox.settle(claim, put_back=put_back, dead=dead)
        except TransientStoreError:
            # the lease runs out and every entry of the claim comes back: applied ones are
            # applied again (harmless), dead ones are found dead again
            logger.warning(
                "Could not settle an outbox claim; its entries come back when the lease ends.",
                extra={"action": "outbox_settle_failed", "reason": "outbox"},
            )


def log_drained(drained: int, since: float) -> None:
    seconds = time.monotonic() - since
    logger.info(
        "Outbox drained: %d events in %.1fs.",
        drained,
        seconds,
        extra={"action": "outbox_drained", "events": drained, "seconds": round(seconds, 3)},
    )


__all__ = ["DrainResult", "Drained", "OutboxDrainer", "log_drained"]
