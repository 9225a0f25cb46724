"""A bad site, for robustness experiments: a ClientApp that only ``ecgfl-simulate attack`` runs.

The production ClientApp (``client.app:app``, the one a hospital installs and approves) has no
attack code. ``ecgfl-simulate attack`` runs this app instead (``app`` below: the same handlers
and mods, plus ``attack_mod`` inside the egress guard and a site opener that can lie about
labels). Even here a site turns attacker only when its node config has a ``partition-id`` and no
``data-dir`` (a virtual site of the Simulation Engine), the run's own directory holds
``attack.json`` (written by ``ecgfl-simulate attack``), and that file names its partition.

Behaviours, on the reply to a ``train`` message (u = w_local - w_global):
- ``scale``: w_global + factor * u (a boosted update, "model replacement");
- ``sign-flip``: w_global - factor * u;
- ``noise``: w_global + Gaussian noise, std factor * RMS(u) per tensor;
- ``label-flip``: trains honestly on labels flipped 0 <-> 1 where annotated;
- ``exfiltrate``: adds an extra array to the reply (what the egress guard must stop).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp.typing import ClientAppCallable

from client import node
from client.app import make_app
from common import protocol
from common.dataset import CachedDataset
from common.experiment import ExperimentConfig
from common.labels import LabelSpace
from common.site import SiteData
from simulations.site_app import placement_mod

ATTACK_FILE = "attack.json"
ATTACK_APP = "simulations.attack_app:app"  # this module's ClientApp, as Flower names it
KINDS = ("scale", "sign-flip", "noise", "label-flip", "exfiltrate")


@dataclass(frozen=True)
class Attack:
    kind: str
    partitions: tuple[int, ...]
    factor: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attack kind {self.kind!r}: expected one of {', '.join(KINDS)}")

    def write(self, run_dir: Path) -> Path:
        path = run_dir / ATTACK_FILE
        path.write_text(
            json.dumps(
                {
                    "kind": self.kind,
                    "partitions": list(self.partitions),
                    "factor": self.factor,
                    "seed": self.seed,
                }
            )
        )
        return path

    @classmethod
    def read(cls, path: Path) -> Attack:
        data = json.loads(path.read_text())
        return cls(
            str(data["kind"]),
            tuple(int(p) for p in data["partitions"]),
            float(data["factor"]),
            int(data.get("seed", 0)),
        )


def active_attack(context: Context) -> Attack | None:
    """This node's attack, or None: always None at a hospital (see the module docstring)."""
    node = context.node_config
    if "data-dir" in node or "partition-id" not in node:
        return None
    run_dir = str(context.run_config.get(protocol.RUN_DIR, ""))
    path = Path(run_dir) / ATTACK_FILE
    if not run_dir or not path.is_file():
        return None
    attack = Attack.read(path)
    return attack if int(node["partition-id"]) in attack.partitions else None


class FlippedSite(SiteData):
    """A site whose training labels lie: 0 <-> 1 wherever a label is annotated."""

    def dataset(self, split: str, space: LabelSpace) -> CachedDataset:
        ds = super().dataset(split, space)
        if split == "train":  # a copy: the honest dataset stays as it is
            ds = copy.copy(ds)
            ds.y = ds.mask * (1 - ds.y)
        return ds


def open_site(context: Context, experiment: ExperimentConfig) -> SiteData:
    """The node's site, lying about its labels if it is a label-flipping attacker."""
    site = node.open_site(context, experiment)
    attack = active_attack(context)
    if attack is None or attack.kind != "label-flip":
        return site
    return FlippedSite(site.name, site.cache, site.rows, site.annotated)


def tamper(sent: ArrayRecord, reply: ArrayRecord, attack: Attack, rnd: int) -> ArrayRecord:
    """The attacker's reply arrays from the honest ones (``sent`` = the global model)."""
    rng = np.random.default_rng([attack.seed, rnd])
    out = {}
    for key, array in reply.items():
        w = array.numpy()
        if not np.issubdtype(w.dtype, np.floating):
            out[key] = array
            continue
        g = sent[key].numpy().astype(np.float32)
        u = w.astype(np.float32) - g
        if attack.kind == "scale":
            bad = g + attack.factor * u
        elif attack.kind == "sign-flip":
            bad = g - attack.factor * u
        elif attack.kind == "noise":
            rms = float(np.sqrt(np.mean(u * u))) if u.size else 0.0
            bad = g + rng.normal(0.0, attack.factor * rms, u.shape).astype(np.float32)
        else:
            bad = w
        out[key] = Array(np.asarray(bad, dtype=w.dtype))
    if attack.kind == "exfiltrate":
        out["leaked-ecg"] = Array(rng.normal(size=(12, 500)).astype(np.float32))
    return ArrayRecord(out)


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """ClientApp mod: a simulated bad site's train replies. Placed after the egress guard and
    before DP clipping, so the attacker skips clipping but not the guard."""
    if msg.metadata.message_type != "train":
        return call_next(msg, context)
    attack = active_attack(context)
    reply = call_next(msg, context)
    if attack is None or attack.kind == "label-flip" or reply.has_error():
        return reply
    (sent,) = msg.content.array_records.values()
    (key, arrays), *_ = reply.content.array_records.items()
    config = msg.content.config_records.get(protocol.CONFIG_RECORD) or {}
    rnd = int(config.get(protocol.SERVER_ROUND, 0))
    reply.content[key] = tamper(sent, arrays, attack, rnd)
    return reply


#: What ``ecgfl-simulate attack`` runs as its ClientApp (simulations/engine.py: app_dir).
app = make_app(open_site, inner_mods=(attack_mod,), outer_mods=(placement_mod,))
