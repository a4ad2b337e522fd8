"""Path and query parameters shared by the routes.

Ids are ULIDs; anything that cannot be one (NUL bytes, 10 kB strings) is a 422 before a
database sees it, which PostgreSQL would otherwise answer with an error (a 500).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from relayline.api.schemas import ID_PATTERN, MAX_SEQ

IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
AfterId = Annotated[str | None, Query(max_length=64, pattern=ID_PATTERN)]
AfterSeq = Annotated[int, Query(ge=0, le=MAX_SEQ)]
Limit = Annotated[
    int | None,
    Query(ge=1, le=1000, description="page size; default 50, at most RELAYLINE_MAX_PAGE_SIZE"),
]
