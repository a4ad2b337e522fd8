"""Terminal agents: allowlisted CLI programs in PTYs on the worker host, streamed to the relay.

- :mod:`.programs` — the allowlist (``RELAYLINE_TERMINAL_PROGRAMS``): names, never command lines.
- :mod:`.environment` — what a program gets: a scrubbed environment and a confined cwd.
- :mod:`.supervisor` — the session leader inside each PTY: ends the whole session when the
  worker dies (parent-death signal), reaps every descendant (child subreaper).
- :mod:`.processes` — the members of a session, signalled group by group (Linux ``/proc``).
- :mod:`.screen` — a ``pyte`` screen fed with the output, redrawn as ANSI for a new viewer.
- :mod:`.output` — what a program prints: incremental UTF-8, the screen, coalescing into frames.
- :mod:`.ending` — when the supervisor ended (a pidfd on the loop), and ending a session
  (SIGHUP and SIGTERM, a grace, SIGKILL).
- :mod:`.session` — one PTY: non-blocking reads on the event loop, input, resize, flow
  control, the end (reader removed, PTY closed, child reaped, ``term.exited``).
- :mod:`.outbox` — the frames on their way to the relay, bounded: past the bound, sessions stop
  reading their PTY (the programs block on their own writes) until it drains.
- :mod:`.host` — every session of the worker: limits, idle and lifetime timers, the relay's
  frames, what the worker announces.

Imports only the standard library, ``ptyprocess``, ``pyte``, ``prometheus_client``,
``structlog``, :mod:`relayline.protocol` and the worker's own modules.
"""
