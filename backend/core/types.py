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

Count = Annotated[int, Field(ge=1, le=INT32_MAX, description="1 to 2147483647")]
"""How many of something (images, epochs, steps): stored in INTEGER columns, so within 32 bits."""

NonNegative = Annotated[int, Field(ge=0, le=INT32_MAX, description="0 to 2147483647")]
"""A count that may be zero (``keep: 0`` removes a class)."""

ImageSide = Annotated[int, Field(ge=8, le=1024, description="pixels, 8 to 1024")]
"""One side of an image in pixels."""

NAME_MAX = 255  # the String(255) name columns
PATH_MAX = 4096  # PATH_MAX on Linux
TEXT_MAX = 10_000  # prompt templates, negative prompts

Name = Annotated[str, Field(min_length=1, max_length=NAME_MAX)]
"""A name the user chooses or a class name: stored in a String(255) column."""

PathText = Annotated[str, Field(min_length=1, max_length=PATH_MAX)]
"""A filesystem path, a model id or an upload id."""

Text = Annotated[str, Field(max_length=TEXT_MAX)]
"""Free text (a prompt template, a negative prompt)."""

# Strings reach the database as JSON params or text columns; NUL characters, which PostgreSQL cannot
# store, are refused where requests enter (the body guard for JSON, ``backend.core.safeyaml`` for YAML).
