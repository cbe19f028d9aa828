"""Shared test fixtures: the real broker, a fake clock, gpiozero's MockFactory, trust material."""

pytest_plugins = [
    "tests.harness.broker",
    "tests.harness.clock",
    "tests.harness.gpio",
    "tests.harness.media_server",
    "tests.harness.postgres",
    "tests.harness.trust",
]
