"""Virtual sites: split one or more sources into N sites and write a site manifest + report.

Schemes: ``natural`` (by hospital / PTB-XL ``site``, small ones merged), ``iid``, ``dirichlet``
(label skew, Dirichlet(alpha) over sites per label) and ``quantity`` (site sizes Dirichlet(alpha)).
Records are always assigned by patient, and each site's train/val/test split is by patient too
(PTB-XL folds where the data has them), so no patient spans sites or splits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from common import sources
from common.config import ConfigError
from common.errors import DataError
from common.labels import LabelSpace
from common.names import RULE, is_plain_name, plain_from
from common.record import RecordInfo
from common.splits import SPLITS, assign_splits
from server import runs, sitesummary

SCHEMES = ("natural", "iid", "dirichlet", "quantity")


@dataclass(frozen=True)
class SourcePlan:
    """One source and how many virtual sites to cut from it."""

    name: str
    data_dir: Path
    sites: int | None = None  # natural: merge down to at most this many; others: exactly this many
    format: str | None = None
    options: dict | None = None
    annotated: list[str] | None = None  # labels this source's sites annotate; None = all


def record_table(scan: sources.Scan, space: LabelSpace) -> pd.DataFrame:
    """Per record: id, patient, natural site, split key and primary label, from the scan alone."""
    rows = []
    for ref in scan.refs:
        info = ref.info or RecordInfo()
        y, _ = space.encode(info.codes, info.coding)
        rows.append(
            {
                "record_id": ref.record_id,
                "patient_id": info.patient_id or ref.record_id,
                "site": str(info.site if info.site is not None else "all"),
                "strat_fold": info.strat_fold,
                "primary": space.labels[int(np.argmax(y))] if y.any() else "none",
                **{f"y_{lab}": int(v) for lab, v in zip(space.labels, y, strict=True)},
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        raise DataError(f"{scan.root}: no readable records to partition")
    if table["strat_fold"].isna().any():
        table = table.drop(columns="strat_fold")
    return table


def _by_patient(table: pd.DataFrame) -> pd.DataFrame:
    return table.groupby("patient_id", sort=True).agg(
        n=("record_id", "size"), site=("site", "first"), primary=("primary", "first")
    )


def _natural(table: pd.DataFrame, max_sites: int | None, min_size: int) -> dict[str, str]:
    """Group per natural site; the smallest groups merge until sizes and count fit. Each group
    gets a plain name (common.names): its member's, or for merged sites the members joined by
    '_' (``2_3``), or the first member and a count when that grows long (``2_and_7_more``)."""
    groups = [[str(k)] for k in sorted(table["site"].unique())]
    size = table.groupby("site").size().to_dict()

    def total(members: list[str]) -> int:
        return sum(size[m] for m in members)

    while len(groups) > 1:
        groups.sort(key=total)
        too_many = max_sites is not None and len(groups) > max_sites
        if not too_many and total(groups[0]) >= min_size:
            break
        groups = [groups[0] + groups[1], *groups[2:]]
    names: dict[str, str] = {}
    for members in groups:
        plain = [plain_from(m, 16) for m in sorted(members)]
        joined = "_".join(plain)
        name = joined if len(joined) <= 32 else f"{plain[0]}_and_{len(plain) - 1}_more"
        while name in names.values():  # two labels that read the same once made plain
            name = f"{name[:28]}_{len(names)}"
        names.update({m: name for m in members})
    return names


def assign_sites(
    table: pd.DataFrame,
    scheme: str,
    n_sites: int | None,
    alpha: float,
    min_size: int,
    rng: np.random.Generator,
) -> pd.Series:
    """Site name per record."""
    if scheme == "natural":
        mapping = _natural(table, n_sites, min_size)
        return table["site"].map(mapping)
    if not n_sites or n_sites < 1:
        raise ConfigError(f"scheme {scheme!r} needs a number of sites")
    patients = _by_patient(table)
    order = rng.permutation(len(patients))
    site_of = np.empty(len(patients), np.int64)
    if scheme == "iid":
        site_of[order] = np.arange(len(patients)) % n_sites
    elif scheme == "quantity":
        share = rng.dirichlet(np.full(n_sites, alpha))
        share = 0.8 * share + 0.2 / n_sites  # keep every site non-empty
        site_of[order] = np.minimum(
            np.searchsorted(np.cumsum(share), (np.arange(len(patients)) + 0.5) / len(patients)),
            n_sites - 1,
        )
    elif scheme == "dirichlet":
        for label in sorted(patients["primary"].unique()):
            members = rng.permutation(np.flatnonzero(patients["primary"].to_numpy() == label))
            share = rng.dirichlet(np.full(n_sites, alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for site, part in enumerate(np.split(members, cuts)):
                site_of[part] = site
    else:
        raise ConfigError(f"unknown scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    width = len(str(n_sites))
    names = pd.Series([f"{i + 1:0{width}d}" for i in site_of], index=patients.index)
    return table["patient_id"].map(names)


def partition(
    plans: list[SourcePlan],
    space: LabelSpace,
    scheme: str,
    cache_dir: Path,
    alpha: float = 0.5,
    min_size: int = 50,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """The site manifest (docs/formats.md) and a per-site, per-split label count table."""
    rng = np.random.default_rng(seed)
    manifest = {
        "cache_dir": str(Path(cache_dir).resolve()),
        "scheme": scheme,
        "alpha": alpha,
        "seed": seed,
        "labels": space.name,
        "sources": {},
        "sites": [],
    }
    counts = []
    for plan in plans:
        scan = sources.scan(plan.data_dir, plan.format, **(plan.options or {}))
        manifest["sources"][plan.name] = {
            "data_dir": str(Path(plan.data_dir).resolve()),
            "format": scan.source,
            "options": plan.options or {},
        }
        table = record_table(scan, space)
        table["vsite"] = assign_sites(table, scheme, plan.sites, alpha, min_size, rng)
        table["split"] = assign_splits(table)
        for vsite, part in table.groupby("vsite", sort=True):
            name = f"{plan.name}-{vsite}"
            if not is_plain_name(name):
                raise ConfigError(f"source name {plan.name!r}: site {name!r} is not {RULE}")
            manifest["sites"].append(
                {
                    "name": name,
                    "source": plan.name,
                    "annotated": plan.annotated,
                    "records": {s: part.loc[part.split == s, "record_id"].tolist() for s in SPLITS},
                }
            )
            for split in SPLITS:
                rows = part[part.split == split]
                counts.append(
                    {
                        "site": name,
                        "split": split,
                        "records": len(rows),
                        **{lab: int(rows[f"y_{lab}"].sum()) for lab in space.labels},
                    }
                )
    return manifest, pd.DataFrame(counts)


def write_report(manifest: dict, counts: pd.DataFrame, out_dir: Path) -> None:
    """manifest.json, partition.csv/json and a plot of label counts per site: a heatmap, or
    above ``sitesummary.SUMMARY_ABOVE`` sites their distribution (a 1,000-row heatmap is
    tens of thousands of pixels tall)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / runs.SITES).write_text(json.dumps(manifest, indent=1))
    counts.to_csv(out_dir / "partition.csv", index=False)
    totals = counts.drop(columns="split").groupby("site", sort=False).sum()
    (out_dir / "partition.json").write_text(json.dumps(totals.to_dict(orient="index"), indent=1))
    plot = _spread if sitesummary.summarised(len(totals)) else _heatmap
    plot(totals, manifest["scheme"], out_dir / "partition.png")


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _heatmap(totals: pd.DataFrame, scheme: str, path: Path) -> None:
    """Positives per site and label, coloured by prevalence."""
    plt = _pyplot()
    labels = [c for c in totals.columns if c != "records"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(labels), 1.2 + 0.35 * len(totals)))
    data = totals[labels].to_numpy()
    ax.imshow(data / np.maximum(totals[["records"]].to_numpy(), 1), cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, str(v), ha="center", va="center", color="w", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(totals)), [f"{s} (n={n})" for s, n in totals["records"].items()])
    ax.set_title(f"positives per site ({scheme}); colour = prevalence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _spread(totals: pd.DataFrame, scheme: str, path: Path) -> None:
    """Many sites: a histogram of their sizes and each label's prevalence over them."""
    plt = _pyplot()
    labels = [c for c in totals.columns if c != "records"]
    sizes = totals["records"].to_numpy()
    prevalence = totals[labels].to_numpy() / np.maximum(sizes[:, None], 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.hist(sizes, bins=min(50, max(5, len(np.unique(sizes)))))
    left.set_xlabel("records per site")
    left.set_ylabel("sites")
    left.set_title(f"{len(sizes)} sites ({scheme}): sizes", fontsize=9)
    right.boxplot(list(prevalence.T), showfliers=True, flierprops={"markersize": 2})
    right.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right")
    right.set_ylabel("prevalence at a site")
    right.set_title("label prevalence over the sites", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
