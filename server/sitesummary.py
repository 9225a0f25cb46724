"""Per-site results at scale: above ``SUMMARY_ABOVE`` sites a report shows the distribution of a
score over the sites (quartiles, the top and bottom sites, a plot) instead of a row per site;
every site's row stays in the run's machine-readable files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUMMARY_ABOVE = 50  # sites: more than this, and reports summarise
SHOWN = 10  # sites at each end of a summary


def summarised(n_sites: int) -> bool:
    return n_sites > SUMMARY_ABOVE


def quartiles(values: list[float]) -> dict[str, float | int | None]:
    """Sites scored, mean, min, quartiles and max of the defined values (None when none are)."""
    v = np.asarray([x for x in values if x is not None and x == x], float)
    if not v.size:
        return {"n": 0, **dict.fromkeys(("mean", "min", "q1", "median", "q3", "max"))}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "min": float(v.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(v.max()),
    }


def ends(scores: dict[str, float | None], n: int = SHOWN) -> tuple[list[str], list[str]]:
    """The ``n`` best and ``n`` worst scored sites, best first and worst first (ties by name)."""
    scored = sorted((s for s in scores if scores[s] is not None), key=lambda s: (-scores[s], s))
    return scored[:n], scored[::-1][:n]


def stats_table(columns: dict[str, list[float | None]], what: str) -> list[str]:
    """A markdown table: one row per column of scores, its distribution over the sites."""
    lines = [
        f"| {what} | sites scored | mean | min | Q1 | median | Q3 | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, values in columns.items():
        q = quartiles(values)
        cells = " | ".join(
            "-" if q.get(k) is None else f"{q[k]:.3f}"
            for k in ("mean", "min", "q1", "median", "q3", "max")
        )
        lines.append(f"| {name} | {q['n']} | {cells} |")
    return lines


def plot_distribution(
    columns: dict[str, list[float | None]],
    path: Path,
    title: str,
    ylabel: str = "test macro AUC per site",
) -> None:
    """A box plot per column over the sites, each site a dot: the spread, not 1,000 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = {k: [x for x in v if x is not None and x == x] for k, v in columns.items()}
    kept = {k: v for k, v in kept.items() if v}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(kept)), 3.8))
    if kept:
        ax.boxplot(list(kept.values()), showfliers=False)
        rng = np.random.default_rng(0)  # jitter only: the same picture every time
        for i, values in enumerate(kept.values(), start=1):
            x = i + rng.uniform(-0.15, 0.15, len(values))
            ax.plot(x, values, ".", ms=2, alpha=0.4, color="C0")
        ax.set_xticks(range(1, len(kept) + 1), [f"{k}\n(n={len(v)})" for k, v in kept.items()])
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
