"""Built-in job kinds; importing this package registers them all."""

from backend.jobs.kinds import benchmark, datasets, gan, generation, selection  # noqa: F401
