"""Shared test fixtures: the real broker, a fake clock, gpiozero's MockFactory, trust material;
and the hypothesis profiles (``ci`` by default, ``long`` with ``LOA_RELIABILITY_LONG=1``)."""

from tests.harness.fuzz import register_profiles

pytest_plugins = [
    "tests.harness.broker",
    "tests.harness.clock",
    "tests.harness.gpio",
    "tests.harness.media_server",
    "tests.harness.postgres",
    "tests.harness.trust",
]

# Before any test module is imported, so every @settings inherits the profile's defaults.
register_profiles()
