"""Exposure and dose figures of one synthetic view, consistent with thickness and density.

A toy automatic exposure control: the anode/filter and kVp follow the compressed thickness
(per vendor table), the tube load follows thickness and glandularity, and the average
glandular dose (AGD) grows roughly exponentially with thickness and by up to ~45% with the
glandular share, the way the dose tables of Dance et al. behave. Figures land in the ranges
real systems report (AGD 0.5-4 mGy, ESAK 2-15 mGy, 24-35 kVp, 20-90 mm).

DICOM units: OrganDose (0040,0316) is in dGy, EntranceDoseInmGy (0040,8302) in mGy,
ExposureInuAs in uAs, Exposure in mAs, ExposureTime in ms, XRayTubeCurrent in mA,
BodyPartThickness in mm, CompressionForce in N.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mammo_density.synth.profiles import VendorProfile


@dataclass(frozen=True)
class Exposure:
    """Acquisition and dose figures of one image."""

    thickness_mm: float
    compression_n: float
    kvp: int
    anode: str
    filter: str
    mas: float
    tube_current_ma: int
    time_ms: int
    esak_mgy: float
    agd_mgy: float
    glandular_pct: int

    @property
    def organ_dose_dgy(self) -> float:
        return self.agd_mgy / 100.0


def breast_thickness(rng: np.random.Generator, density: str) -> float:
    """Compressed CC thickness (mm) of a breast; dense breasts are a little thinner."""
    mean = {"A": 60.0, "B": 56.0, "C": 51.0, "D": 46.0}[density]
    return float(np.clip(rng.normal(mean, 11.0), 22.0, 85.0))


def exposure(rng: np.random.Generator, profile: VendorProfile, thickness_mm: float,
             glandular_fraction: float) -> Exposure:
    """AEC result for a breast of ``thickness_mm`` and glandular share ``glandular_fraction``."""
    thickness_mm = float(np.clip(thickness_mm, 20.0, 90.0))
    anode, filt = next((a, f) for limit, a, f in profile.target_filters if thickness_mm <= limit)
    kvp = int(np.clip(round(profile.kvp_base + profile.kvp_per_cm * thickness_mm / 10.0
                            + rng.integers(-1, 2)), 24, 35))
    g = float(np.clip(glandular_fraction, 0.0, 1.0))
    agd = 0.42 * math.exp(0.0225 * thickness_mm) * (1.0 + 0.45 * g) * rng.uniform(0.92, 1.08)
    agd = float(np.clip(agd, 0.5, 4.0))
    # AGD/ESAK conversion falls with thickness (g-factor) and rises with kVp/HVL
    conversion = float(np.clip(0.42 - 0.0035 * thickness_mm + 0.004 * (kvp - 28), 0.12, 0.45))
    esak = agd / conversion
    output_mgy_per_mas = 0.06 * (kvp / 28.0) ** 2.2 * (700.0 / profile.source_to_detector_mm) ** 2
    mas = max(8.0, esak / output_mgy_per_mas)
    ma = round(float(profile.tube_current_ma * rng.uniform(0.9, 1.05)))
    time_ms = max(1, round(float(mas) / ma * 1000.0))
    force = float(np.clip(rng.normal(110.0, 25.0), 50.0, 200.0))
    pct = int(np.clip(round(100.0 * g + rng.normal(0.0, 4.0)), 1, 99))
    return Exposure(thickness_mm=round(thickness_mm, 1), compression_n=round(force, 1), kvp=kvp,
                    anode=anode, filter=filt, mas=round(float(mas), 1), tube_current_ma=ma,
                    time_ms=time_ms, esak_mgy=round(esak, 3), agd_mgy=round(agd, 3),
                    glandular_pct=pct)
