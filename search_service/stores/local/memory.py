"""The machine's memory, for the store and its build child alike."""

from __future__ import annotations

import os


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
