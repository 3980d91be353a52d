"""Built-in job kinds; importing this package registers them all."""

from backend.jobs.kinds import (  # noqa: F401
    assess,
    benchmark,
    datasets,
    diffusion,
    gan,
    generation,
    personalize,
    pools,
    selection,
)
