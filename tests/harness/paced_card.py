"""A paced sound card for tests about what sounded and when: a private PulseAudio null sink
(it consumes samples at 48 kHz on the monotonic clock, as a card does), with each opening of the
card also written to a file of its own through ALSA's ``file`` plugin (``truncate false``:
``speaker.raw``, ``speaker.raw.0001``, ...), so a test reads what a listener heard, play by play.
An unpaced file sink would swallow a 12 s programme in a moment and make every cut-in late.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench.paced_sink import PulseNullSink


@contextmanager
def paced_card(root: Path) -> Iterator[Path]:
    """A private PulseAudio null sink; yields its socket. A low-latency stream of silence
    stays connected to it: an idle null sink sleeps up to its 2 s maximum latency before it
    notices a new stream, which would hold up the first write of every play by about 2 s."""
    missing = [t for t in ("pulseaudio", "pacat", "parec", "pactl") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not found (make sysdeps installs pulseaudio-utils)")
    sink = PulseNullSink(root)
    sink.start()
    keepalive: subprocess.Popen[bytes] | None = None
    try:
        keepalive = subprocess.Popen(
            ["pacat", "--raw", "--format=s16le", "--channels=2", "--rate=48000",
             "--latency-msec=20", "/dev/zero"],
            env={**os.environ, **sink.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield sink.socket
    finally:
        if keepalive is not None:
            keepalive.terminate()
            keepalive.wait(10)
        sink.stop()


def use_paced_card(home: Path, socket: Path) -> None:
    """Point the ALSA default of a station whose ``$HOME`` is ``home`` at the paced card, each
    play's PCM also kept in a file of its own."""
    (home / ".asoundrc").write_text(
        f'pcm.loa_card {{\n type pulse\n server "unix:{socket}"\n}}\n'
        'pcm.!default {\n type file\n slave.pcm "loa_card"\n'
        f' file "{home / "speaker.raw"}"\n format "raw"\n truncate false\n}}\n'
    )


def plays(capture: Path) -> list[Path]:
    """One file per play (per opening of the card), in the order they were opened."""

    def number(path: Path) -> int:
        suffix = path.name[len(capture.name) :]
        return int(suffix[1:]) if suffix else 0

    return sorted(capture.parent.glob(capture.name + "*"), key=number)


class VanishingCard:
    """A paced card that can vanish and come back while a station plays into it (issue 13,
    devices): ``vanish()`` SIGKILLs the private PulseAudio daemon, as a USB card pulled out
    (its clients get no goodbye: their next write fails), and ``restore()`` starts it again on
    the same socket, with the low-latency keep-alive stream (see ``paced_card``)."""

    def __init__(self, root: Path) -> None:
        missing = [t for t in ("pulseaudio", "pacat", "parec", "pactl") if shutil.which(t) is None]
        if missing:
            pytest.skip(f"{', '.join(missing)} not found (make sysdeps installs pulseaudio-utils)")
        self.sink = PulseNullSink(root)
        self._keepalive: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.sink.socket

    @property
    def present(self) -> bool:
        return self.sink.died() is None and self._keepalive is not None

    def restore(self) -> None:
        """Start the card (the first time, or again after ``vanish``)."""
        self.sink.start()
        self._keepalive = subprocess.Popen(
            ["pacat", "--raw", "--format=s16le", "--channels=2", "--rate=48000",
             "--latency-msec=20", "/dev/zero"],
            env={**os.environ, **self.sink.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def vanish(self) -> None:
        daemon = self.sink._proc  # bench.paced_sink keeps its process private
        if daemon is not None:
            daemon.kill()
            daemon.wait(10)
        self.sink._proc = None
        self._stop_keepalive()

    def _stop_keepalive(self) -> None:
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is not None:
            keepalive.terminate()
            keepalive.wait(10)

    def close(self) -> None:
        self._stop_keepalive()
        self.sink.stop()
