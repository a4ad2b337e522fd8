"""What else a worker's connection carries besides turns: observers of the links.

The worker endpoint (:mod:`relayline.turns.worker_gateway`) hands each observer the links as
they come and go, their ``state`` frames, and the frames whose type the observer claims
(terminal sessions claim ``term.*``). Observers live in higher layers (the terminals
package); this Protocol is how the endpoint reaches them without importing them.
"""

from __future__ import annotations

from typing import Any, Protocol

from relayline.turns.worker_link import WorkerLink


class LinkObserver(Protocol):
    frame_types: frozenset[str]
    """The worker frame types this observer handles (and no other observer does)."""

    raw_prefix: str | None
    """Frames whose text starts with this are offered to :meth:`raw_frame` first, before they
    are decoded (None: none are)."""

    async def raw_frame(self, link: WorkerLink, text: str) -> bool:
        """A frame that starts with :attr:`raw_prefix`, as text; True when it was handled
        (it is then not decoded nor handed on), False to have it decoded and handled as any
        other."""

    def attached(self, link: WorkerLink, hello: dict[str, Any]) -> None:
        """A worker connected and said ``hello`` (before any other frame of it is handled)."""

    def state(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        """One of the worker's ``state`` frames (after the relay's own handling of it)."""

    async def frame(self, link: WorkerLink, frame: dict[str, Any]) -> None:
        """A frame of one of :attr:`frame_types`, in the order the worker sent it; the worker's
        next frame is read only once this returns."""

    async def detached(self, link: WorkerLink) -> None:
        """The worker's connection ended (after which no call names this link)."""
