"""Test harness: real system parts (the broker) shared by the integration tests."""
