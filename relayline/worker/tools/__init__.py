"""Tools an agent may call: the registry (``registry``), the built-in workspace tools
(``builtins``), their confinement rules (``sandbox``) and command execution (``process``)."""

from __future__ import annotations
