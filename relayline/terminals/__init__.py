"""Terminal sessions, relay side: which worker runs which session, for whom; routing clients'
ops to that worker and its output to the ``term:<id>`` topic.

- :mod:`.registry` — the sessions this relay knows (:class:`TerminalRecord`), with their owner.
- :mod:`.access` — who may watch a session, and who may type into it.
- :mod:`.hosts` — the connected workers that run terminals, their programs and room.
- :mod:`.service` — :class:`TerminalService`: opening, input, resize, redraw, closing, and the
  workers' frames published on the bus (so every instance's viewers get them).
"""
