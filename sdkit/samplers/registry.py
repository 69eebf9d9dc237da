"""One record per sampler: its names, how it plans and samples, and the diffusers scheduler it must equal.

Every other table (sdkit.SAMPLERS, the CLI's choices and --list-samplers, A1111 names in metadata, the test
oracles) is derived from SAMPLERS here, so a sampler cannot be added without its A1111 name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from . import ddim, ddpm, deis, dpmpp, euler, kdpm2, lcm, lms, pndm, unipc

# generate()'s schedule -> (A1111 "Schedule type", the diffusers scheduler option that gives it).
# None: the checkpoint's own timestep spacing (leading, linspace or trailing, as its scheduler config says).
SCHEDULES = {
    None: ("Uniform", {}),
    "trailing": ("SGM Uniform", {"timestep_spacing": "trailing"}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "beta": ("Beta", {"use_beta_sigmas": True}),
}
SPACINGS = (None, "trailing")  # the schedules every sampler takes
ALL_SCHEDULES = tuple(SCHEDULES)


@dataclass(frozen=True)
class Sampler:
    """A sampler: sample(plan, model, x, noise, hook) on the tables plan(name, config, steps, start, schedule)."""

    name: str  # sdkit's name, as generate(sampler=) takes it
    a1111: str  # AUTOMATIC1111's "Sampler" name
    plan: Callable
    sample: Callable
    reference: str  # the diffusers scheduler class it equals (tests only; sdkit never imports diffusers)
    reference_config: dict = field(default_factory=dict)  # extra from_config arguments of that class
    schedules: tuple[str | None, ...] = SPACINGS
    stochastic: bool = False  # draws fresh noise at each step (from each image's own generator)
    a1111_automatic: str | None = None  # what A1111 1.9+ runs for this sampler under "Schedule type: Automatic"
    fractional: bool = False  # can start or stop part-way (denoising_start / denoising_end)


_SIGMA_SCHEDULES = ALL_SCHEDULES  # k-diffusion-style samplers: also karras, exponential and beta
SAMPLERS = {s.name: s for s in [
    Sampler("ddim", "DDIM", ddim.plan, ddim.sample, "DDIMScheduler"),
    Sampler("pndm", "PLMS", pndm.plan, pndm.sample, "PNDMScheduler"),
    Sampler("euler", "Euler", euler.plan, euler.euler, "EulerDiscreteScheduler", schedules=_SIGMA_SCHEDULES,
            fractional=True),
    Sampler("euler_a", "Euler a", euler.plan, euler.euler_ancestral, "EulerAncestralDiscreteScheduler",
            stochastic=True, fractional=True),
    Sampler("heun", "Heun", euler.plan, euler.heun, "HeunDiscreteScheduler", schedules=_SIGMA_SCHEDULES),
    Sampler("dpm2", "DPM2", kdpm2.plan, kdpm2.dpm2, "KDPM2DiscreteScheduler", schedules=_SIGMA_SCHEDULES),
    Sampler("dpm2_a", "DPM2 a", kdpm2.plan, kdpm2.dpm2_ancestral, "KDPM2AncestralDiscreteScheduler",
            schedules=_SIGMA_SCHEDULES, stochastic=True),
    Sampler("lms", "LMS", euler.plan, lms.lms, "LMSDiscreteScheduler", schedules=_SIGMA_SCHEDULES, fractional=True),
    Sampler("dpmpp_2m", "DPM++ 2M", dpmpp.multistep_plan, dpmpp.dpmpp_2m, "DPMSolverMultistepScheduler",
            schedules=_SIGMA_SCHEDULES, a1111_automatic="karras", fractional=True),
    Sampler("unipc", "UniPC", dpmpp.multistep_plan, unipc.unipc, "UniPCMultistepScheduler",
            schedules=_SIGMA_SCHEDULES, fractional=True),
    Sampler("deis", "DEIS", deis.plan, deis.deis, "DEISMultistepScheduler", schedules=_SIGMA_SCHEDULES,
            fractional=True),
    Sampler("dpmpp_2m_sde", "DPM++ 2M SDE", dpmpp.multistep_plan, dpmpp.dpmpp_sde, "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++"}, _SIGMA_SCHEDULES, stochastic=True, a1111_automatic="exponential",
            fractional=True),
    Sampler("dpmpp_3m_sde", "DPM++ 3M SDE", dpmpp.multistep_plan, dpmpp.dpmpp_3m_sde, "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, _SIGMA_SCHEDULES, stochastic=True,
            a1111_automatic="exponential", fractional=True),
    Sampler("ddpm", "DDPM", ddpm.plan, ddpm.ddpm, "DDPMScheduler", stochastic=True),
    Sampler("lcm", "LCM", lcm.plan, lcm.lcm, "LCMScheduler", schedules=(None,), stochastic=True),
    Sampler("tcd", "TCD", lcm.tcd_plan, lcm.tcd, "TCDScheduler", schedules=(None,), stochastic=True),
]}
NAMES = tuple(SAMPLERS)
FRACTIONAL = tuple(name for name, s in SAMPLERS.items() if s.fractional)
# Other names generate() takes: name -> (sampler, schedule it implies)
ALIASES = {"plms": ("pndm", None), "dpmpp_2m_karras": ("dpmpp_2m", "karras")}


def resolve(sampler: str, schedule: str | None = None) -> tuple[Sampler, str | None]:
    """A sampler name or alias and a schedule -> (the sampler, the schedule); ValueError naming the valid ones.
    An alias that implies a schedule ("dpmpp_2m_karras") takes no other."""
    name, implied = ALIASES.get(sampler, (sampler, None)) if isinstance(sampler, str) else (sampler, None)
    if name not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; use one of: {', '.join(NAMES)} "
                         f"(or {', '.join(f'{a} = {n}' + (f' + {s}' if s else '') for a, (n, s) in ALIASES.items())})")
    if implied is not None:
        if schedule not in (None, implied):
            raise ValueError(f"sampler {sampler!r} means {name} with schedule {implied!r}, not {schedule!r}; "
                             f"pass sampler={name!r}, schedule={schedule!r}")
        schedule = implied
    s = SAMPLERS[name]
    if schedule not in s.schedules:
        valid = ", ".join(repr(x) for x in s.schedules)
        known = schedule in SCHEDULES
        raise ValueError(f"schedule {schedule!r} is " + (f"not available for sampler {name}" if known else "unknown")
                         + f"; use one of: {valid}")
    return s, schedule
