"""`loa-province time-beacon` publishes a retained, maintenance-signed beacon a station accepts,
and an untrusted station takes it as its time floor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent import keyfiles
from agent.core.verify import Accepted
from province.registry import Registry
from province.signing_log import log_path, verify_log
from tests.harness.broker import MosquittoBroker, Recorder
from tests.harness.clock import FakeClock
from tests.harness.trust import make_station
from tests.harness.trust import test_key as seeded_key

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def province_home(tmp_path: Path, broker: MosquittoBroker) -> Path:
    home = tmp_path / "province"
    with Registry(home / "registry.db") as registry:
        registry.set_meta("province", "25")
    (home / "ca").mkdir()
    shutil.copy(broker.ca_path, home / "ca" / "ca.crt")
    cert, key = broker.client_credentials("province-25")
    (home / "operator").mkdir()
    shutil.copy(cert, home / "operator" / "operator.crt")
    shutil.copy(key, home / "operator" / "operator.key")
    keyfiles.save_private(home / "maintenance.key", seeded_key("maintenance"))
    return home


def test_beacon_is_retained_signed_and_accepted(
    tmp_path: Path, mqtt_broker: MosquittoBroker, mqtt_connect: Any, fake_clock: FakeClock
) -> None:
    home = province_home(tmp_path, mqtt_broker)
    result = subprocess.run(
        [str(BIN / "loa-province"), "time-beacon", "--home", str(home), "--once",
         "--broker", f"mqtts://{mqtt_broker.host}:{mqtt_broker.port}",
         "--key", str(home / "maintenance.key")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"published": "time"' in result.stdout

    station_client: Recorder = mqtt_connect("25/08230/08230-01")
    station_client.subscribe("loa/v1/25/time")
    beacon = station_client.wait_for_message("loa/v1/25/time")
    assert beacon.retain

    # A station whose clock is not synchronised takes the beacon's time as its floor.
    station = make_station(
        tmp_path / "station", fake_clock, clock_trust="kernel", kernel_synchronised=False
    )
    try:
        verdict = station.ingest(bytes(beacon.payload), "loa/v1/25/time")
        assert isinstance(verdict, Accepted) and verdict.kind == "time"
        floor = station.state().time_floor
        assert floor is not None and floor > fake_clock.now()
    finally:
        station.store.close()

    report = verify_log(log_path(home))
    assert report.ok and len(report.entries) == 1  # the run's start, not every beacon
    mqtt_clear = mqtt_connect("province-25")
    mqtt_clear.publish("loa/v1/25/time", b"", retain=True)
