"""The one rule for names that cross the federation: a site's name (provisioning, partitions,
replies, reports, folders) and any coordinator-sent name that becomes a folder (a run's).

One plain path component: 1-64 of ``A-Z a-z 0-9 . _ -``, starting with a letter or digit, never
``..``. Names read from data (a hospital column, a PTB-XL site number) are made plain with
``plain_from``.
"""

from __future__ import annotations

import re

PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE = "1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'"
_OUTSIDE = re.compile(r"[^A-Za-z0-9._-]+")


def is_plain_name(value: object) -> bool:
    return isinstance(value, str) and bool(PLAIN_NAME.fullmatch(value)) and ".." not in value


def plain_from(value: object, limit: int = 64) -> str:
    """A plain name for a label read from data: other characters become '-', cut to ``limit``."""
    text = _OUTSIDE.sub("-", str(value)).replace("..", ".").strip("-._")[:limit].rstrip("-._")
    return text or "site"
