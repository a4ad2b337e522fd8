"""Terminal sessions, relay side: which worker runs which session, for whom; routing clients'
ops to that worker and its output to the ``term:<id>`` topic.

- :mod:`.registry` — a session's record (:class:`TerminalRecord`): owner, state, size, holder.
- :mod:`.access` — who may watch a session, and who may type into it.
- :mod:`.hosts` — what a worker that runs terminals announces: programs, room, sessions.
- :mod:`.sessions` — the sessions of this instance's workers: the link observer that publishes
  their ``term.*`` frames on the bus, and ends them (detached, lost, adopted after a restart).
- :mod:`.directory` — where every instance finds every session and host (local, or Redis).
- :mod:`.remote` — what instances tell the holder of a session, and what it does when told.
- :mod:`.service` — :class:`TerminalService`, what clients use: open, look up, type, resize,
  redraw, close.
"""
