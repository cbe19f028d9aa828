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

``crash:<point>[:<n>]``
    The process SIGKILLs itself (a real SIGKILL: no clean-up, no ``finally``, no atexit, as a
    power cut or the OOM killer would end it) the ``n``-th time (1 unless given) it passes the
    crash point ``<point>``, one of ``CRASH_POINTS`` (each described in ``CRASH_POINT_DOCS``).
    Several may be armed at once (``crash:cache-written,crash:play-ended:3``). The variable is
    read once, when the module is imported; unset, a pass costs one global lookup and a test
    of an empty dict. Just before dying the point writes one line to stderr
    (``loa fault: crash at <point> (pass <n>)``) so a test can tell its kill from any other.

``sense-stuck:<file>``
    Simulated hardware only (``LOA_HAL=sim``, gpiozero's mock pins): while ``<file>`` exists,
    the health inputs it names (separated by commas or white space; an empty file names them
    all) read "absent" whatever the relays do, as a sense input that does not follow its relay
    (a cut speaker line, an amplifier whose power supply died); once the file is gone they read
    "present" again. ``hal.inputs`` polls the file every ``SENSE_POLL_S`` on a thread of its own
    that exists only while the fault is armed, so each change is a real edge through gpiozero.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV = "LOA_FAULT"
STALL_MAIN_LOOP = "stall-main-loop"
CRASH_PREFIX = "crash:"
SENSE_STUCK_PREFIX = "sense-stuck:"
SENSE_POLL_S = 0.05

# The crash points, in the order a station passes them from a playlist to its as-run.
PLAYLIST_ACCEPTED = "playlist-accepted"
KEYRING_STORED = "keyring-stored"
CACHE_WRITTEN = "cache-written"
CACHE_RENAMED = "cache-renamed"
OUTBOX_WRITTEN = "outbox-written"
OUTBOX_ACKED = "outbox-acked"
PLAY_STARTED = "play-started"
PLAY_ENDED = "play-ended"

CRASH_POINT_DOCS: dict[str, str] = {
    PLAYLIST_ACCEPTED: "agent/trust_store.py: an accepted playlist's transaction has committed; "
    "the station has not reloaded its playlists nor replanned yet.",
    KEYRING_STORED: "agent/trust_store.py: a keyring rotation's transaction has committed; the "
    "station has not retried the envelopes held for it yet.",
    CACHE_WRITTEN: "agent/cache.py: a download's temporary file is complete, verified against "
    "its hash and fsynced; it has not been renamed to its hash name yet.",
    CACHE_RENAMED: "agent/cache.py: the file has its hash name; the cache directory is not "
    "fsynced yet and no loudness sidecar or verified index mentions it.",
    OUTBOX_WRITTEN: "agent/outbox.py: a report (and, for an as-run, its occurrence's booking) "
    "has committed; it has not been published yet.",
    OUTBOX_ACKED: "agent/outbox.py: a receipt's deletes have committed; the station has not "
    "flushed what the receipt made room for yet.",
    PLAY_STARTED: "agent/player.py: the first sample of an item is written to the sound card; "
    "the station has not been told, so no on-air mark is stored yet.",
    PLAY_ENDED: "agent/player.py: the last sample is written and the sink closed; the hold "
    "time, the relays off and the as-run are still to come.",
}
CRASH_POINTS: tuple[str, ...] = tuple(CRASH_POINT_DOCS)
KNOWN = frozenset({STALL_MAIN_LOOP})


def names(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    return frozenset(part.strip() for part in environ.get(ENV, "").split(",") if part.strip())


def active(name: str, environ: Mapping[str, str] = os.environ) -> bool:
    return name in names(environ)


def crashes(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """The armed crash points: point -> the pass (1-based) that kills. Malformed entries
    (unknown point, a count that is not a positive integer) are left out: ``unknown`` names
    them."""
    armed: dict[str, int] = {}
    for name in names(environ):
        parsed = _parse_crash(name)
        if parsed is not None:
            armed[parsed[0]] = parsed[1]
    return armed


def unknown(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    return frozenset(
        name
        for name in names(environ)
        if name not in KNOWN
        and not (name.startswith(CRASH_PREFIX) and _parse_crash(name))
        and not (name.startswith(SENSE_STUCK_PREFIX) and len(name) > len(SENSE_STUCK_PREFIX))
    )


def sense_stuck_file(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The file of an armed ``sense-stuck:<file>`` (the first one), or None."""
    for name in sorted(names(environ)):
        if name.startswith(SENSE_STUCK_PREFIX) and len(name) > len(SENSE_STUCK_PREFIX):
            return Path(name[len(SENSE_STUCK_PREFIX) :])
    return None


def stuck_inputs(path: Path, inputs: Iterable[str]) -> frozenset[str]:
    """The inputs ``sense-stuck`` holds "absent" now: none while ``path`` does not exist,
    those it names (unknown names ignored), or all of them when it names none."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    except OSError:
        return frozenset()  # unreadable for a moment (being written): as if not there yet
    known = frozenset(inputs)
    named = frozenset(text.replace(",", " ").split())
    return known & named if named else known


def _parse_crash(name: str) -> tuple[str, int] | None:
    if not name.startswith(CRASH_PREFIX):
        return None
    point, _, count = name[len(CRASH_PREFIX) :].partition(":")
    if point not in CRASH_POINT_DOCS:
        return None
    if not count:
        return point, 1
    if not count.isdigit() or int(count) < 1:
        return None
    return point, int(count)


# Read once, when the agent imports this module (before anything starts a thread or points fd 2
# elsewhere: hal/audio.py lends fd 2 to ALSA's chatter while PyAudio opens a device, so the
# dying line goes to a copy of fd 2 taken now).
_armed: dict[str, int] = crashes()
_stderr: int | None = None
if _armed:
    with contextlib.suppress(OSError):
        _stderr = os.dup(2)
_passes: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(point: str) -> None:
    """Die here by SIGKILL if ``point`` is armed and this is its ``n``-th pass (see above)."""
    if not _armed or point not in _armed:
        return
    with _lock:  # points are passed on several threads (player, media workers, runtime)
        passes = _passes[point] = _passes.get(point, 0) + 1
    if passes == _armed[point]:
        if _stderr is not None:
            with contextlib.suppress(OSError):  # no stderr: die all the same
                os.write(_stderr, f"loa fault: crash at {point} (pass {passes})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
