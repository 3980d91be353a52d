"""The samplers Stable Diffusion generation offers: one table, free of torch/diffusers imports, so job
params, PNG metadata and the studio all read their names from here."""

from __future__ import annotations

from typing import Literal

# name -> (diffusers scheduler class, overrides on top of the model's own scheduler config, the
# "Sampler:" label A1111-style tools write into PNG metadata)
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM++ 2M"),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM++ 2M Karras",
    ),
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),  # the reference study's (diffusers' SD default)
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}
SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


def sampler_label(name: str) -> str:
    """The A1111 "Sampler:" label of a scheduler name (the name itself if unknown)."""
    return SCHEDULERS[name][2] if name in SCHEDULERS else name
