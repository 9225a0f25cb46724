"""Write whole synthetic datasets: plan, render and write each record, then the index files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from common.config import ConfigError
from common.record import LEADS
from simulations.synth.annotation import SCP_STATEMENTS, scp_codes, tis_codes
from simulations.synth.network import (
    PlannedRecord,
    PtbxlLikeSpec,
    TisNetworkSpec,
    plan_ptbxl_like,
    plan_tis,
    synthesize,
)
from simulations.synth.writers import ptbxl_filenames, write_ptbxl_record, write_tis_record

TIS_OUTPUTS = ("index.csv", "records")
PTBXL_OUTPUTS = ("ptbxl_database.csv", "scp_statements.csv", "records100", "records500")


def _clear(out_dir: Path, outputs: tuple[str, ...], force: bool) -> None:
    """Refuse to mix two datasets in one folder; with ``force`` remove only our own outputs."""
    present = [name for name in outputs if (out_dir / name).exists()]
    if present and not force:
        raise ConfigError(
            f"{out_dir}: already holds a dataset ({', '.join(present)}); "
            "choose another folder or pass --force to replace it"
        )
    for name in present:
        path = out_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _run(task: Callable, jobs: list, workers: int, progress: bool, what: str) -> list[dict]:
    """Apply ``task`` to every job, in order, on ``workers`` processes, with a progress bar."""
    bar = dict(total=len(jobs), desc=what, unit="rec", disable=not progress)
    if workers <= 1:
        return [task(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(task, jobs, chunksize=16), **bar))


def _fault_lead(fault: str | None) -> str:
    """'flat:7' -> 'V2'; swaps are named as they are."""
    if fault is None:
        return ""
    kind, _, lead = fault.partition(":")
    return f"{kind} {LEADS[int(lead)]}" if lead else kind


def _record_id(record: PlannedRecord) -> str:
    return f"R{record.index + 1:06d}"


def _write_tis_one(job: tuple[PlannedRecord, TisNetworkSpec, Path]) -> dict:
    record, spec, root = job
    signal, info = synthesize(record, spec)
    file = f"records/{record.site.name}/{_record_id(record)}.csv"
    header = {
        "sampling_rate": record.device.fs,
        "hospital": record.site.name,
        "device": record.device.name,
        "date": record.date.isoformat(),
        "patient_id": f"P{record.patient_index + 1:06d}",
        "age": record.age,
        "sex": record.sex,
        "diagnosis": tis_codes(record.written),
    }
    write_tis_record(root / file, signal, header)
    return {"file": file, "fault": _fault_lead(info["fault"])}


def write_tis_network(
    spec: TisNetworkSpec,
    out_dir: Path,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write a TIS-like network (docs/formats.md) into ``out_dir``; returns its index.csv.

    Beyond the required columns the index keeps the truth: ``true_diagnosis`` (before annotator
    errors), device, sampling rate, age, sex and any electrode fault.
    """
    out_dir = Path(out_dir)
    _clear(out_dir, TIS_OUTPUTS, force)
    plan = plan_tis(spec)
    written = _run(_write_tis_one, [(r, spec, out_dir) for r in plan], workers, progress, "tis")
    rows = [
        {
            "record_id": _record_id(r),
            "hospital": r.site.name,
            "patient_id": f"P{r.patient_index + 1:06d}",
            "file": w["file"],
            "diagnosis": tis_codes(r.written),
            "true_diagnosis": tis_codes(r.truth),
            "device": r.device.name,
            "sampling_rate": r.device.fs,
            "age": r.age,
            "sex": r.sex,
            "date": r.date.isoformat(),
            "electrode_fault": w["fault"],
        }
        for r, w in zip(plan, written, strict=True)
    ]
    index = out_dir / "index.csv"
    pd.DataFrame(rows).to_csv(index, index=False)
    return index


def _write_ptbxl_one(job: tuple[PlannedRecord, PtbxlLikeSpec, Path]) -> dict:
    record, spec, root = job
    signal, info = synthesize(record, spec)
    write_ptbxl_record(root, record.index + 1, signal)
    return {"fault": _fault_lead(info["fault"])}


def write_ptbxl_like(
    spec: PtbxlLikeSpec,
    out_dir: Path,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Write a PTB-XL-like dataset (PhysioNet layout) into ``out_dir``; returns its database CSV.

    ``true_scp_codes`` is an extra column with the labels before annotator errors.
    """
    out_dir = Path(out_dir)
    _clear(out_dir, PTBXL_OUTPUTS, force)
    plan = plan_ptbxl_like(spec)
    jobs = [(r, spec, out_dir) for r in plan]
    written = _run(_write_ptbxl_one, jobs, workers, progress, "ptbxl")
    rows = []
    for r, w in zip(plan, written, strict=True):
        low, high = ptbxl_filenames(r.index + 1)
        rows.append(
            {
                "ecg_id": r.index + 1,
                "patient_id": float(r.patient_index + 1),
                "age": float(r.age),
                "sex": int(r.sex == "F"),
                "height": None,
                "weight": None,
                "nurse": None,
                "site": float(r.site.name),
                "device": r.device.name,
                "recording_date": r.date.strftime("%Y-%m-%d %H:%M:%S"),
                "report": ", ".join(lab.lower() for lab in r.written),
                "scp_codes": scp_codes(r.written),
                "heart_axis": None,
                "infarction_stadium1": None,
                "infarction_stadium2": None,
                "validated_by": None,
                "second_opinion": False,
                "initial_autogenerated_report": False,
                "validated_by_human": r.validated,
                "baseline_drift": None,
                "static_noise": None,
                "burst_noise": None,
                "electrodes_problems": w["fault"] or None,
                "extra_beats": None,
                "pacemaker": None,
                "strat_fold": r.fold,
                "filename_lr": low,
                "filename_hr": high,
                "true_scp_codes": scp_codes(r.truth),
            }
        )
    (out_dir / "scp_statements.csv").write_text(SCP_STATEMENTS)
    database = out_dir / "ptbxl_database.csv"
    pd.DataFrame(rows).to_csv(database, index=False)
    return database
