"""Settings: one place for every knob, read from flags and ``REBALANCE_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class PathNotAllowed(ValueError):
    """A user-supplied path lies outside the directories the operator allowed."""


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # the API layer can run without torch importable
        return "cpu"


class Settings(BaseSettings):
    """Runtime settings. Every field is also ``REBALANCE_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="REBALANCE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(7860, ge=1, le=65535)
    workspace: Path = Path("workspace")
    db_url: str | None = None  # default: sqlite:///<workspace>/rebalance.db
    workers: int = Field(1, ge=0, le=64)  # embedded worker processes started by `python app.py`
    # Extra directories users may read datasets/images from (the start directory and the workspace always are).
    allow_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    # Extra modules imported at start that register more job kinds (comma-separated in the environment).
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth: str | None = None  # "user:password" protects UI and API
    device: str = Field(default_factory=_default_device)
    lease_s: float = Field(30.0, gt=0)  # a running job's lease; renewed by heartbeats every lease_s / 3
    poll_s: float = Field(0.2, gt=0)  # idle worker polling interval
    max_attempts: int = Field(3, ge=1)  # a job that keeps killing its worker fails after this many starts
    max_body_mb: float = Field(1.0, gt=0)  # JSON request bodies
    max_upload_mb: float = Field(512.0, gt=0)  # multipart uploads (zips)
    start_dir: Path = Field(default_factory=Path.cwd)
    # Ray cluster that runs the parts of shardable jobs (generation shards, benchmark runs): "auto" (the
    # cluster this host joined with `ray start`), "local" (start one inside the process), or an address
    # (host:6379, ray://host:10001). None: every job runs in its worker's process.
    ray_address: str | None = None

    @field_validator("allow_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p]
        return value

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_plugins(cls, value: object) -> object:
        if isinstance(value, str):
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("ray_address", mode="before")
    @classmethod
    def _blank_ray(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if any(c.isspace() for c in value):
                raise ValueError("ray_address must be auto, local, or a cluster address like host:6379")
        return value

    @field_validator("auth")
    @classmethod
    def _check_auth(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or value.startswith(":")):
            raise ValueError("auth must look like user:password")
        return value

    @property
    def workspace_dir(self) -> Path:
        return self.workspace.expanduser().resolve()

    @property
    def tmp_dir(self) -> Path:
        """Scratch space inside the workspace: spooled uploads, Gradio's uploads (never the system temp)."""
        return self.workspace_dir / "tmp"

    @property
    def gradio_temp_dir(self) -> Path:
        """Where Gradio keeps uploaded and cached files (``GRADIO_TEMP_DIR``)."""
        return self.tmp_dir / "gradio"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.workspace_dir / 'rebalance.db'}"

    @property
    def allowed_roots(self) -> list[Path]:
        roots = [self.start_dir, self.workspace, *self.allow_dirs]
        return [Path(r).expanduser().resolve() for r in roots]

    def is_allowed(self, path: str | Path) -> Path:
        """Resolve ``path`` (symlinks and ``..`` first) and return it if it lies under an allowed root."""
        resolved = Path(path).expanduser().resolve()
        for root in self.allowed_roots:
            if resolved == root or resolved.is_relative_to(root):
                return resolved
        raise PathNotAllowed(
            f"path {str(path)!r} is outside the allowed directories; the operator can add it with "
            f"--allow-dir DIR (or REBALANCE_ALLOW_DIRS)"
        )
