"""The real player on the paced sink: ``agent.player.Player`` with gpiozero ``MockFactory``
relays, ``hal.audio.Decoder`` (ffmpeg) and ``hal.audio.PyAudioSink("default")``, which the
private ``~/.asoundrc`` sends to the PulseAudio null sink. Shared by the start-accuracy and the
preemption benchmarks.

The player's API is changing under other hands (pre-roll, resume); this rig builds requests
from whatever fields ``PlayRequest`` has, and calls the decoder factory with or without the
start offset the newer player passes.
"""

from __future__ import annotations

import dataclasses
import queue
from pathlib import Path
from typing import Any

from agent.player import Player, PlayItem, PlayRequest, PlayResult
from bench.paced_sink import Reference, TimedSink
from hal.audio import Decoder, PyAudioSink
from hal.clock import SystemClock
from hal.relays import GpioRelays, use_mock_pins

AMP_PIN, ZONE_PIN = 17, 27
REQUEST_FIELDS = {f.name for f in dataclasses.fields(PlayRequest)}
HAS_PREROLL = "start_at" in REQUEST_FIELDS


def decoder(path: Path, gain: float, offset_s: float = 0.0) -> Decoder:
    if offset_s:
        raise ValueError("the benchmarks always play items from their start")
    # The same decoder the station builds (agent/app.py): exact seek, 20 ms chunks.
    return Decoder(path, gain, start_s=offset_s, chunk_frames=960)


class PlayerRig:
    def __init__(self, warmup_s: float = 0.0) -> None:
        self.factory = use_mock_pins()
        self.relays = GpioRelays(AMP_PIN, {"north": ZONE_PIN})
        self.done: queue.Queue[PlayResult] = queue.Queue()
        self.first_writes: list[float] = []
        self.reported_latencies_s: list[float] = []
        # One sink for the rig's life, as the station keeps one (PortAudio stays started).
        self.sink = PyAudioSink("default")
        self.player = Player(
            self.relays,
            lambda: TimedSink(
                self.sink, self.first_writes.append, self.reported_latencies_s.append
            ),
            decoder,
            SystemClock(),
            self.done.put,
            warmup_s=warmup_s,
            hold_s=0.0,
        )
        self._serial = 0

    def request(self, item: Path, start_at: float | None = None) -> PlayRequest:
        self._serial += 1
        fields: dict[str, Any] = {
            "key": f"bench-{self._serial}",
            "items": (PlayItem(item.stem, "0" * 64, item),),
            "zones": ("north",),
            "gain": 1.0,
            "gap_s": 0.0,
            "deadline": None,
        }
        if start_at is not None:
            if not HAS_PREROLL:
                raise RuntimeError("this player has no PlayRequest.start_at (pre-roll)")
            fields["start_at"] = start_at
        return PlayRequest(**fields)

    def wait_done(self, timeout_s: float = 30.0) -> PlayResult:
        return self.done.get(timeout=timeout_s)

    def close(self) -> None:
        self.player.close()
        self.sink.release()
        self.relays.close()
        self.factory.reset()


def reference(path: Path) -> Reference:
    """The item as the player's decoder produces it (MP3 priming trimmed by ffmpeg), to line
    the capture up with."""
    with decoder(path, 1.0) as source:
        return Reference.from_pcm(b"".join(source.chunks()))
