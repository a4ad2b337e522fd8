"""One topic as this instance's Redis reader sees it: the cursor, the local subscriptions, and
delivery of stream entries in seq order, once each, with ``events.missed`` before any jump."""

from __future__ import annotations

import random

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relayline.bus.base import Subscription, fan_out, missed_event
from relayline.envelope import decode_event
from relayline.errors import ValidationFailed

_log = structlog.get_logger("relayline.bus.redis_streams")

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""What a call to an unreachable (or too slow) Redis raises."""
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class Feed:
    """This instance's live view of one topic: reader cursor plus local subscriptions."""

    __slots__ = ("epoch", "key", "last_id", "seq", "subscriptions", "topic")

    def __init__(self, topic: str, key: bytes, epoch: str, seq: int) -> None:
        self.topic = topic
        self.key = key
        self.subscriptions: tuple[Subscription, ...] = ()
        self.move_to(epoch, seq)

    def move_to(self, epoch: str, seq: int) -> None:
        self.epoch = epoch
        self.seq = seq
        self.last_id = f"{epoch}-{seq}".encode()


def deliver(feed: Feed, entries: Entries) -> None:
    """Fan out entries in order, once each, signalling an epoch change or a gap first."""
    for raw_id, fields in entries:
        raw_epoch, _, raw_seq = raw_id.partition(b"-")
        seq = int(raw_seq)
        epoch = raw_epoch.decode()
        if epoch != feed.epoch:
            if int(epoch) < int(feed.epoch):
                continue  # from a log already replaced (a reply that raced a re-subscribe)
            feed.epoch, feed.seq = epoch, seq - 1
            signal = missed_event(feed.topic, epoch, seq - 1, "epoch_changed")
            fan_out(feed.subscriptions, signal)
        elif seq <= feed.seq:
            continue  # already delivered (a reply that raced a re-subscribe)
        elif seq > feed.seq + 1:
            feed.seq = seq - 1
            fan_out(feed.subscriptions, missed_event(feed.topic, epoch, seq - 1, "gap"))
        feed.last_id = raw_id
        try:
            event = decode_event(fields[b"f"], epoch)
        except (KeyError, ValidationFailed):
            # Leaving feed.seq behind makes the next entry signal a gap for this one.
            _log.error("bus.bad_entry", topic=feed.topic, entry_id=raw_id.decode())
            continue
        feed.seq = seq
        fan_out(feed.subscriptions, event)


def backoff(failures: int) -> float:
    """Exponential backoff with full jitter, from 50 ms up to 5 s."""
    return random.uniform(0, min(5.0, 0.05 * 2 ** min(failures, 10)))
