"""Unified label spaces: raw diagnosis codes of any coding system -> multi-hot targets + mask.

A space is data (YAML): an ordered label list and, per coding system, which codes mean each label.
Built-in spaces live beside this module; ``LabelSpace.load`` also takes a path to a user's file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from common.config import ConfigError, load_yaml

_BUILTIN_DIR = Path(__file__).parent


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


def label_space(name_or_path: str) -> str:
    """A label space setting, as a config here names it: a built-in name, or a file that loads
    (made absolute: the Flower apps run in other working directories)."""
    LabelSpace.load(name_or_path)
    return name_or_path if not Path(name_or_path).suffix else str(Path(name_or_path).absolute())


@lru_cache(maxsize=32)
def _parsed(cls: type[LabelSpace], path: str, mtime_ns: int, size: int) -> LabelSpace:
    """A label space file parsed once per version (its modification time and size) in this
    process: every config that names it, every message's job and every dataset load it again."""
    return cls.from_dict(load_yaml(path, what="label space"), origin=path)


@dataclass(frozen=True)
class LabelSpace:
    """An ordered set of unified labels with one codebook per coding system."""

    name: str
    labels: tuple[str, ...]
    codebooks: dict[str, dict[str, tuple[str, ...]]]
    hierarchical: frozenset[str] = frozenset()

    @classmethod
    def load(cls, name_or_path: str | Path) -> LabelSpace:
        path = Path(name_or_path)
        if not path.suffix:
            path = _BUILTIN_DIR / f"{name_or_path}.yaml"
            if str(name_or_path) not in builtin_spaces():  # not a lookup: any name, any length
                raise ConfigError(
                    f"unknown label space {name_or_path!r}; built-in: {', '.join(builtin_spaces())}"
                    " (or give a path to a YAML file)"
                )
        try:
            st = path.stat()
        except OSError:  # load_yaml names the problem
            return cls.from_dict(load_yaml(path, what="label space"), origin=str(path))
        return _parsed(cls, str(path), st.st_mtime_ns, st.st_size)

    @classmethod
    def from_dict(cls, data: dict, origin: str = "<label space>") -> LabelSpace:
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping with 'name', 'labels', 'codebooks'")
        for key in ("name", "labels", "codebooks"):
            if key not in data:
                raise ConfigError(f"{origin}: missing key {key!r}")
        labels = _strings(data["labels"], f"{origin}: labels")
        if len(set(labels)) != len(labels) or not labels:
            raise ConfigError(f"{origin}: 'labels' must be a non-empty list without repeats")
        if not isinstance(data["codebooks"] or {}, dict):
            raise ConfigError(f"{origin}: 'codebooks' must map coding system -> codebook")
        codebooks: dict[str, dict[str, tuple[str, ...]]] = {}
        for coding, book in (data["codebooks"] or {}).items():
            if not isinstance(book, dict):
                raise ConfigError(f"{origin}: codebooks.{coding} must map label -> list of codes")
            for label in book:
                if str(label) not in labels:
                    raise ConfigError(
                        f"{origin}: codebooks.{coding} names label {label!r}, not in 'labels'"
                    )
            codebooks[str(coding)] = {
                str(label): _strings(codes, f"{origin}: codebooks.{coding}.{label}")
                for label, codes in book.items()
            }
        return cls(
            name=str(data["name"]),
            labels=labels,
            codebooks=codebooks,
            hierarchical=frozenset(
                _strings(data.get("hierarchical", []), f"{origin}: hierarchical")
            ),
        )

    def to_dict(self) -> dict:
        """Plain data, for checkpoints: a model carries the space it was trained on."""
        return {
            "name": self.name,
            "labels": list(self.labels),
            "codebooks": {c: {k: list(v) for k, v in b.items()} for c, b in self.codebooks.items()},
            "hierarchical": sorted(self.hierarchical),
        }

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        return self.labels.index(label)

    def annotated(self, coding: str) -> np.ndarray:
        """Mask of the labels that ``coding`` can express (1.0) or not (0.0)."""
        book = self.codebooks.get(coding, {})
        return np.array([1.0 if book.get(lab) else 0.0 for lab in self.labels], np.float32)

    def encode(
        self, codes: Iterable[str], coding: str, annotated: Iterable[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Multi-hot target and mask for one record.

        ``annotated`` narrows the mask to the labels a source really annotates (a site that
        never reports some diagnosis must not teach the model that it is absent).
        """
        codes = [str(c).strip() for c in codes]
        book = self.codebooks.get(coding, {})
        prefix = coding in self.hierarchical
        target = np.zeros(len(self.labels), np.float32)
        for i, label in enumerate(self.labels):
            for want in book.get(label, ()):
                if any(c == want or (prefix and c.startswith(want + ".")) for c in codes):
                    target[i] = 1.0
                    break
        mask = self.annotated(coding)
        if annotated is not None:
            keep = set(annotated)
            mask *= np.array([lab in keep for lab in self.labels], np.float32)
        return target * mask, mask

    def known_codes(self, coding: str) -> set[str]:
        return {c for codes in self.codebooks.get(coding, {}).values() for c in codes}


def _strings(value: object, where: str) -> tuple[str, ...]:
    """A YAML list of names or codes; a bare string would otherwise split into characters."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return tuple(str(v) for v in value)
