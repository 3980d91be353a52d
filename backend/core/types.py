"""Value types shared by request paths, queries and job params: numbers that must fit a database column.

Ids are stored in INTEGER columns (32-bit on PostgreSQL, 64-bit on SQLite). Bounding them to the
smaller range here, once, means an out-of-range id is refused as a 422 naming the field instead of
reaching the database and coming back as an ``OverflowError`` or ``NumericValueOutOfRange``.
FastAPI reads the same ``Field`` bounds for path and query parameters as pydantic does for models.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

INT32_MAX = 2**31 - 1  # the largest value of a PostgreSQL INTEGER column

DbId = Annotated[int, Field(ge=1, le=INT32_MAX, description="a row id (1 to 2147483647)")]
"""A row id: path parameters (``/api/jobs/{job_id}``) and id fields of job params."""

DbOffset = Annotated[int, Field(ge=0, le=INT32_MAX, description="0 to 2147483647")]
"""A list offset (``?offset=``) or an "after this id" cursor (``?after_id=``)."""

Seed = Annotated[int, Field(ge=0, le=INT32_MAX, description="a seed (0 to 2147483647)")]
"""A random seed that is stored (benchmark runs, pool images): non-negative and within an INTEGER column."""
