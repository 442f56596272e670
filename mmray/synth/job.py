"""The synth job's config and runner, shared by ``ray_jobs/synth.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mmray.synth.cohort import SynthResult, write_cohort


@dataclass(frozen=True)
class SynthJobConfig:
    out: str
    patients: int | None = None
    seed: int = 0
    profile: Literal["tiny", "demo", "large", "xl"] = "tiny"
    corrupt: int = 0
    slide_px: tuple[int, int] | None = None  # level-0 slide size (width, height) instead of the profile's

    def validate(self):
        if self.patients is not None and self.patients < 1:
            yield ("patients", f"must be at least 1, got {self.patients}")
        if self.corrupt < 0:
            yield ("corrupt", f"must be 0 or more, got {self.corrupt}")
        if self.slide_px is not None and (len(self.slide_px) != 2 or min(self.slide_px) < 64):
            yield ("slide_px", f"must be [width, height], each at least 64 px, got {self.slide_px}")


def run_synth_job(cfg: SynthJobConfig) -> SynthResult:
    return write_cohort(cfg.out, patients=cfg.patients, seed=cfg.seed, profile=cfg.profile, corrupt=cfg.corrupt,
                        slide_px=tuple(cfg.slide_px) if cfg.slide_px else None)
