"""Which app bundles (Flower FABs) a hospital accepts, and what one holds.

The hospital always runs its own installed ClientApp; a bundle's code is never imported here. A run
is accepted only when its bundle is approved: its SHA-256 is in the policy's ``approved_apps``,
or (``trust_installed_release``) it is this release: the same ClientApp component, and every
Python file of the packages a hospital runs (``client/``, ``common/``) byte-identical to the
installed ones. A refused bundle is kept (the newest ``KEEP``) for ``ecgfl-hospital approve``.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import io
import json
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import common
from common.hospital import SitePolicy

HOSPITAL_PACKAGES = ("client", "common")  # what the installed ClientApp imports
CLIENTAPP = "client.app:app"
INSTALLED_ROOT = Path(common.__file__).resolve().parents[1]
MAX_FILES, MAX_FILE_BYTES = 5000, 4 << 20  # a hostile bundle costs bounded memory to review
KEEP = 20


class BundleError(ValueError):
    """Not a readable app bundle."""


@dataclass
class BundleReview:
    """What a bundle holds and how its hospital-side code differs from the installed release."""

    sha256: str
    name: str  # publisher/name version, from its pyproject
    clientapp: str  # the ClientApp component it names
    files: dict[str, int] = field(default_factory=dict)  # path -> bytes
    changed: dict[str, str] = field(default_factory=dict)  # path -> unified diff vs installed
    added: list[str] = field(default_factory=list)  # hospital-side .py files not installed here
    missing: list[str] = field(default_factory=list)  # installed ones the bundle lacks

    @property
    def is_installed_release(self) -> bool:
        return self.clientapp == CLIENTAPP and not (self.changed or self.added or self.missing)


def _installed_sources() -> dict[str, Path]:
    return {
        str(p.relative_to(INSTALLED_ROOT)): p
        for package in HOSPITAL_PACKAGES
        for p in (INSTALLED_ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }


def _identity(pyproject: bytes | None) -> tuple[str, str]:
    """(publisher/name version, ClientApp component) from the bundle's pyproject.toml."""
    try:
        data = tomllib.loads(pyproject.decode()) if pyproject else {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        data = {}
    project = data.get("project", {}) if isinstance(data.get("project"), dict) else {}
    app = data.get("tool", {}).get("flwr", {}).get("app", {}) if isinstance(data, dict) else {}
    components = app.get("components", {}) if isinstance(app, dict) else {}
    name = f"{app.get('publisher', '?')}/{project.get('name', '?')} {project.get('version', '?')}"
    return name[:200], str(components.get("clientapp", "?"))[:200]


def review(content: bytes) -> BundleReview:
    """Read a bundle (a zip) without running any of it and compare it with this release."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"not a Flower app bundle (zip): {exc}") from exc
    if len(members) > MAX_FILES:
        raise BundleError(f"{len(members)} files; at most {MAX_FILES} are reviewed")

    def read(member: zipfile.ZipInfo) -> bytes | None:
        if member.file_size > MAX_FILE_BYTES:
            return None
        try:
            return archive.read(member)
        except (zipfile.BadZipFile, ValueError, OSError):  # corrupt member, bad CRC, bomb
            return None

    by_name = {m.filename: m for m in members}
    pyproject = by_name.get("pyproject.toml")
    name, clientapp = _identity(read(pyproject) if pyproject else None)
    result = BundleReview(
        hashlib.sha256(content).hexdigest(),
        name,
        clientapp,
        {m.filename: m.file_size for m in members},
    )
    installed = _installed_sources()
    for path, member in sorted(by_name.items()):
        if not path.endswith(".py") or path.split("/")[0] not in HOSPITAL_PACKAGES:
            continue
        if path not in installed:
            result.added.append(path)
            continue
        theirs, ours = read(member), installed[path].read_bytes()
        if theirs != ours:
            result.changed[path] = _diff(path, ours, theirs)
    result.missing = sorted(set(installed) - set(by_name))
    return result


def _diff(path: str, ours: bytes, theirs: bytes | None) -> str:
    if theirs is None:
        return f"{path}: too large or unreadable to compare\n"
    lines = difflib.unified_diff(
        ours.decode(errors="replace").splitlines(keepends=True),
        theirs.decode(errors="replace").splitlines(keepends=True),
        f"installed/{path}",
        f"bundle/{path}",
    )
    return "".join(lines)


def approval(policy: SitePolicy, result: BundleReview) -> str | None:
    """Why this hospital accepts the bundle, or None if it does not."""
    if result.sha256 in policy.approved_apps:
        return f"approved by this hospital ({policy.approved_apps[result.sha256]})"
    if policy.trust_installed_release and result.is_installed_release:
        return "identical to the installed release"
    return None


def describe(result: BundleReview, max_diff_lines: int = 400) -> str:
    """What ``ecgfl-hospital approve`` shows before it records anything."""
    lines = [
        f"bundle   {result.name}",
        f"sha256   {result.sha256}",
        f"clientapp component: {result.clientapp}"
        + ("" if result.clientapp == CLIENTAPP else f"  (installed release: {CLIENTAPP})"),
        f"files    {len(result.files)} ({sum(result.files.values()):,} bytes)",
    ]
    if result.is_installed_release:
        lines.append("hospital-side code: identical to the installed release")
    else:
        lines.append(
            f"hospital-side code differs from the installed release: {len(result.changed)} "
            f"changed, {len(result.added)} added, {len(result.missing)} missing"
        )
        lines += [f"  added   {p}" for p in result.added]
        lines += [f"  missing {p}" for p in result.missing]
        diff = "".join(result.changed.values()).splitlines()
        lines += diff[:max_diff_lines]
        if len(diff) > max_diff_lines:
            lines.append(f"... {len(diff) - max_diff_lines} more diff lines")
    lines.append(
        "Approving lets runs of exactly this bundle reach this hospital. The hospital still runs "
        "its own installed ClientApp, egress guard, audit log and limits; the bundle's code is "
        "never imported here."
    )
    return "\n".join(lines)


def keep_refused(folder: Path, content: bytes, result: BundleReview, run_id: int) -> Path:
    """Store a refused bundle for review; only the newest ``KEEP`` are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.sha256}.fab"
    if not path.exists():
        path.write_bytes(content)
    info_path = path.with_suffix(".json")
    runs = _runs(info_path)
    info = {
        "sha256": result.sha256,
        "bundle": result.name,
        "run_ids": sorted({*runs, run_id}),
        "seen": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    info_path.write_text(json.dumps(info))
    for old in sorted(folder.glob("*.fab"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
    return path


def refused_for_run(folder: Path, run_id: int) -> Path | None:
    """The kept bundle a run was refused with, if any."""
    for info in folder.glob("*.json"):
        if run_id in _runs(info):
            return info.with_suffix(".fab")
    return None


def _runs(info: Path) -> list[int]:
    try:
        return [int(r) for r in json.loads(info.read_text()).get("run_ids", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []
