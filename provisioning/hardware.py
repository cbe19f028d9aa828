"""The station's hardware as a technician's command uses it: the relays, the health inputs and
the sound card, built from the station config with the agent's own parts (``hal.relays``,
``hal.inputs``, ``hal.audio`` and the agent's ``Player``), so a test from ``loa-provision``
switches and plays exactly as the agent would.

``LOA_HAL=sim`` (as for the agent) puts gpiozero on its ``MockFactory`` and the sound on a WAV
file. The simulated health inputs read "present" (a healthy station); ``LOA_SIM_INPUTS_LOW``
(comma-separated input names, e.g. ``amp_power``) makes some read "absent", which is how a
test shows a sense input that does not follow its relay.
"""

from __future__ import annotations

import math
import os
import queue
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.player import Player, PlayItem, PlayRequest, PlayResult, RelayTestResult
from hal.audio import CHANNELS, SAMPLE_RATE, AudioSink, Decoder, open_sink
from hal.chimes import PcmClip
from hal.clock import SystemClock
from hal.inputs import HealthInputs, InputChange
from hal.relays import GpioRelays, use_mock_pins

RELAY_DWELL_S = 0.5  # as the agent's relay_test: the relay settles and the inputs debounce
TONE_HZ = 1000.0
TONE_DBFS = -12.0


@dataclass
class Hardware:
    config: Config
    relays: GpioRelays
    inputs: HealthInputs | None
    sink: AudioSink
    factory: Any  # the MockFactory under LOA_HAL=sim, else None

    def read_inputs(self) -> dict[str, bool]:
        return dict(self.inputs.states()) if self.inputs is not None else {}

    def player(self, on_done: Callable[[PlayResult], None], *, warmup: bool = True) -> Player:
        config = self.config
        return Player(
            self.relays,
            lambda: self.sink,
            lambda path, gain, start_s: Decoder(path, gain, start_s=start_s, chunk_frames=960),
            SystemClock(),
            on_done,
            warmup_s=config.audio.warmup_s if warmup else 0.0,
            hold_s=0.5,
            amp_linger_s=0.0,
        )


@contextmanager
def open_hardware(config: Config, env: dict[str, str] | None = None) -> Iterator[Hardware]:
    """The relays (all off), the inputs and the sink; everything off and released at the end."""
    env = dict(os.environ) if env is None else env
    factory = use_mock_pins() if config.sim else None
    relays = GpioRelays(config.amp_pin, config.zones, active_high=config.active_high)
    inputs = None
    try:
        if config.inputs.pins:
            inputs = HealthInputs(
                config.inputs.pins,
                _ignore,
                active_high=config.inputs.active_high,
                bounce_s=config.inputs.bounce_s,
            )
            if factory is not None:
                low = {n.strip() for n in env.get("LOA_SIM_INPUTS_LOW", "").split(",")}
                for name, pin in config.inputs.pins.items():
                    present = name not in low
                    mock = factory.pin(pin)
                    driven_high = present == config.inputs.active_high
                    (mock.drive_high if driven_high else mock.drive_low)()
        wav = config.audio.wav or config.paths.state / "speaker.wav"
        sink = open_sink(config.audio.output, config.audio.device, wav)
        yield Hardware(config, relays, inputs, sink, factory)
    finally:
        relays.all_off()
        if inputs is not None:
            inputs.close()
        relays.close()
        if factory is not None:
            factory.reset()


def _ignore(change: InputChange) -> None:
    """Edges during a technician's test are read with ``states()``, not followed."""


def relay_test(hardware: Hardware, zones: tuple[str, ...]) -> RelayTestResult:
    """The agent's own relay test (``Player.relay_test``), waited for."""
    results: queue.Queue[RelayTestResult] = queue.Queue()
    player = hardware.player(lambda result: None)
    player.relay_test(
        zones, dwell_s=RELAY_DWELL_S, read_inputs=hardware.read_inputs, on_result=results.put
    )
    timeout = hardware.config.audio.warmup_s + (len(zones) + 2) * RELAY_DWELL_S * 2 + 10
    try:
        return results.get(timeout=timeout)
    finally:
        player.close()


def tone_pcm(seconds: float, hz: float = TONE_HZ, dbfs: float = TONE_DBFS) -> bytes:
    """A sine tone as station PCM (s16le, the station's rate and channels), 10 ms fades."""
    frames = int(seconds * SAMPLE_RATE)
    amplitude = 32767 * 10 ** (dbfs / 20)
    fade = int(0.01 * SAMPLE_RATE)
    out = bytearray()
    for n in range(frames):
        ramp = min(1.0, n / fade, (frames - n) / fade) if fade else 1.0
        sample = int(amplitude * ramp * math.sin(2 * math.pi * hz * n / SAMPLE_RATE))
        out += struct.pack("<h", sample) * CHANNELS
    return bytes(out)


def play(
    hardware: Hardware,
    zones: tuple[str, ...],
    *,
    pcm: bytes | None = None,
    path: Path | None = None,
    volume: int = 80,
    warmup: bool = True,
) -> PlayResult:
    """Play ``pcm`` (a tone) or the file at ``path`` on ``zones``, through the agent's player
    (amplifier, warm-up, zones, sink, level meter), and wait for its result."""
    results: queue.Queue[PlayResult] = queue.Queue()
    player = hardware.player(results.put, warmup=warmup)
    if pcm is not None:
        clip = pcm
        item = PlayItem("test tone", "", Path("test-tone"), source=lambda g: PcmClip(clip, g))
        seconds = len(pcm) / (SAMPLE_RATE * CHANNELS * 2)
    elif path is not None:
        item = PlayItem(path.name, "", path)
        seconds = 3600.0
    else:
        raise ValueError("nothing to play")
    request = PlayRequest("audio-test", (item,), zones, volume / 100, 0.0, None)
    player.play(request)
    try:
        return results.get(timeout=hardware.config.audio.warmup_s + seconds + 30)
    finally:
        player.close()
