"""Synthetic multi-hospital 12-lead ECG data: a TIS-like network and PTB-XL-like datasets.

Signals come from a 3-D cardiac dipole projected on the 12 leads, driven by an RR process, with
pathologies as the features that define them and hospital/device effects on top.
"""

import hashlib
from pathlib import Path

from simulations.synth.build import write_ptbxl_like, write_tis_network
from simulations.synth.device import CLEAN, Acquisition, Device
from simulations.synth.dipole import Subject, random_subject
from simulations.synth.generate import generate_record
from simulations.synth.network import PtbxlLikeSpec, TisNetworkSpec, plan_ptbxl_like, plan_tis
from simulations.synth.pathology import LABELS


def _source_fingerprint() -> str:
    """Digest of the generator's own code: a dataset cached for a spec is stale once it changes."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


GENERATOR_FINGERPRINT = _source_fingerprint()

__all__ = [
    "CLEAN",
    "GENERATOR_FINGERPRINT",
    "LABELS",
    "Acquisition",
    "Device",
    "PtbxlLikeSpec",
    "Subject",
    "TisNetworkSpec",
    "generate_record",
    "plan_ptbxl_like",
    "plan_tis",
    "random_subject",
    "write_ptbxl_like",
    "write_tis_network",
]
