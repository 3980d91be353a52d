"""Built-in job kinds; importing this package registers them all."""

from backend.jobs.kinds import benchmark, datasets, gan, generation, pools, selection  # noqa: F401
