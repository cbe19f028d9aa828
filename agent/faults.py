"""Named fault-injection points for tests, switched on by ``$LOA_FAULT``; off in production.

Owns: reading ``LOA_FAULT`` (names separated by commas, spaces ignored) and the list of names
there are. A test that must see the station fail in a particular way starts ``loa-agent`` with
the name set; nothing else sets it, and with it unset (as in every unit file and provisioned
station) every point is inert. A name that is not in ``KNOWN`` is reported once at start, so a
typo in a test does not pass quietly as "the fault did nothing".

Points:

``stall-main-loop``
    The station's runtime thread blocks, until the process is told to stop, the first time it
    handles a watchdog tick after READY (``agent/app.py``): the main loop stops making progress
    while every other thread runs on, so systemd's watchdog must be what notices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "LOA_FAULT"
STALL_MAIN_LOOP = "stall-main-loop"
KNOWN = frozenset({STALL_MAIN_LOOP})


def names(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    return frozenset(part.strip() for part in environ.get(ENV, "").split(",") if part.strip())


def active(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    return name in names(environ)


def unknown(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    return names(environ) - KNOWN
