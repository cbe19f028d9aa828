# Loa: the two entry points a newcomer needs (`make demo`, `make test`) and what they stand on.
# Everything a fresh Debian 12 / Raspberry Pi OS machine lacks is installed here, not by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: the compiler and headers pyaudio builds with, the real broker, decoder and
# sound parts the integration tests use.
APT_PACKAGES := python3-venv python3-dev gcc make mosquitto mosquitto-clients ffmpeg curl \
                portaudio19-dev libasound2-plugins alsa-utils openssl pulseaudio pulseaudio-utils \
                postgresql libpq5 systemd faketime

.PHONY: test lint typecheck unit sysdeps venv demo clean

test: venv lint typecheck
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest tests/unit

sysdeps: .sysdeps.stamp
.sysdeps.stamp: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages: $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# Debian starts a system-wide mosquitto on port 1883 when installed; tests use their own.
	@touch $@

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml .sysdeps.stamp
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# Benchmarks on real parts (a private PulseAudio null sink paces the sound card); each writes
# bench/results/<name>.json, then the report regenerates the table in docs/benchmarks.md.
.PHONY: bench
bench: venv
	$(BIN)/python -m bench.start_accuracy
	$(BIN)/python -m bench.preemption
	$(BIN)/python -m bench.memory_60min
	$(BIN)/python -m bench.prefetch
	$(BIN)/python -m bench.cache_scan
	$(BIN)/python -m bench.telemetry_bytes
	$(BIN)/python -m bench.collector_ingest
	$(BIN)/python -m bench.emergency_fanout
	$(BIN)/python -m bench.unit_security
	$(BIN)/python -m bench.footprint
	$(BIN)/python -m bench.playback_cpu
	$(BIN)/python -m bench.playlist_scale
	$(BIN)/python -m bench.coverage_scale
	$(BIN)/python -m bench.report

# Every benchmark in its short --quick mode (unit_security has none and takes a second), then
# the report; each result file says whether it was quick. BENCH_RESULTS is where the result
# files go, BENCH_REPORT_FLAGS what the report is told: CI (.ci/run) points BENCH_RESULTS at a
# temporary directory and passes --check, so it never rewrites bench/results or docs/.
BENCH_RESULTS      ?= bench/results
BENCH_REPORT_FLAGS ?=
BENCH_QUICK        := start_accuracy preemption memory_60min prefetch cache_scan \
                      telemetry_bytes collector_ingest emergency_fanout footprint \
                      playback_cpu playlist_scale coverage_scale
.PHONY: bench-quick
bench-quick: venv
	@for b in $(BENCH_QUICK); do \
	  echo "bench.$$b --quick"; \
	  $(BIN)/python -m bench.$$b --quick --results '$(BENCH_RESULTS)' || exit 1; \
	done
	$(BIN)/python -m bench.unit_security --results '$(BENCH_RESULTS)'
	$(BIN)/python -m bench.report --results '$(BENCH_RESULTS)' $(BENCH_REPORT_FLAGS)

# The reliability suite (issue 13) in its long mode, its counts into bench/results/, then the
# report regenerates docs/reliability.md. CI runs the same tests in their bounded mode (make test).
# The crash-point soak is separate: LOA_SOAK_KILLS=100 LOA_SOAK_SEED=1 (docs/reliability.md).
RELIABILITY_TESTS := tests/e2e/test_crash_points.py tests/e2e/test_fault_*.py \
                     tests/e2e/test_attack_*.py tests/integration/test_corpus_over_mqtt.py \
                     tests/unit/test_fuzz_*.py
.PHONY: reliability
reliability: venv
	LOA_RELIABILITY_RESULTS=$(CURDIR)/bench/results LOA_RELIABILITY_LONG=1 \
	  $(BIN)/pytest -q --timeout=1800 -o faulthandler_timeout=1500 $(wildcard $(RELIABILITY_TESTS))
	$(BIN)/python -m bench.report

demo: venv
	$(BIN)/loa-province demo --out demo-out

clean:
	rm -rf $(VENV) .sysdeps.stamp .mypy_cache .pytest_cache .ruff_cache
