"""Prefetch throughput: `MediaCache.fetch` of 20 media of 10 MiB each from a loopback HTTP
server, one after the other, against curl fetching the same files from the same server in the
same run.

The media are random bytes from a fixed seed. They are served by ``python -m http.server``
bound to 127.0.0.1, in its own process, so the server never competes with the fetching code for
this process's GIL; both tools talk to the same server. Each trial fetches all the files into a
fresh, empty directory: Loa through one `MediaCache` (``allow_http``), one ``fetch`` per file
(which hashes, writes, fsyncs, renames and fsyncs the directory); curl in one invocation with
one ``-o`` per file (``curl -s --fail``), so curl pays for one process start per trial, not per
file. curl does not fsync: the detail also gives curl followed by ``sync`` of its files, which
is what the same durability costs it. The served files are in the page cache (just written),
for both tools alike. The modes alternate trial by trial; each figure is the median of the
trials. ``ratio`` is Loa's time over curl's: above 1, Loa is slower.

    .venv/bin/python -m bench.prefetch [--files 20] [--mib 10] [--trials 3]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from agent.cache import MediaCache
from bench.common import RESULTS, machine_info, rounded, write_result

COMMAND = ".venv/bin/python -m bench.prefetch"
QUICK = {"files": 5, "mib": 2, "trials": 2}
MIB = 1024 * 1024
SEED = 20240601


def make_media(directory: Path, files: int, mib: int, seed: int = SEED) -> list[tuple[str, str]]:
    """``files`` files of ``mib`` MiB of random bytes; returns (name, sha256) of each."""
    rng = random.Random(seed)
    made = []
    for i in range(files):
        data = rng.randbytes(mib * MIB)
        name = f"medium-{i:03d}.bin"
        (directory / name).write_bytes(data)
        made.append((name, hashlib.sha256(data).hexdigest()))
    return made


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(directory), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(base + "/", timeout=1):
                return server, base
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the loopback HTTP server did not start") from None
            time.sleep(0.05)


def loa_trial(base: str, media: list[tuple[str, str]], size: int, dest: Path) -> float:
    cache = MediaCache(dest, allow_http=True)
    start = time.perf_counter()
    for name, sha in media:
        cache.fetch(f"{base}/{name}", sha, size)
    return time.perf_counter() - start


def curl_trial(base: str, media: list[tuple[str, str]], dest: Path) -> tuple[float, float]:
    """Seconds for curl alone, and for curl followed by ``sync`` of the files it wrote."""
    dest.mkdir()
    args = ["curl", "-s", "--fail"]
    for name, _ in media:
        args += ["-o", str(dest / name), f"{base}/{name}"]
    start = time.perf_counter()
    subprocess.run(args, check=True)
    curl_s = time.perf_counter() - start
    subprocess.run(["sync", *(str(dest / name) for name, _ in media)], check=True)
    return curl_s, time.perf_counter() - start


def check_copies(dest: Path, media: list[tuple[str, str]]) -> None:
    for name, sha in media:
        if hashlib.sha256((dest / name).read_bytes()).hexdigest() != sha:
            raise RuntimeError(f"curl's copy of {name} is not the medium")


def run(tmp: Path, files: int, mib: int, trials: int) -> dict[str, Any]:
    served = tmp / "served"
    served.mkdir()
    media = make_media(served, files, mib)
    size = mib * MIB
    total_mb = files * size / 1e6
    server, base = start_server(served)
    loa_s: list[float] = []
    curl_s: list[float] = []
    curl_sync_s: list[float] = []
    try:
        for trial in range(trials):
            # Alternate which goes first, so neither always follows the other.
            order = ("loa", "curl") if trial % 2 == 0 else ("curl", "loa")
            for mode in order:
                dest = tmp / f"{mode}-{trial}"
                if mode == "loa":
                    loa_s.append(loa_trial(base, media, size, dest))
                else:
                    plain, synced = curl_trial(base, media, dest)
                    curl_s.append(plain)
                    curl_sync_s.append(synced)
                    check_copies(dest, media)
                shutil.rmtree(dest)
    finally:
        server.terminate()
        server.wait(10)
    loa_med = statistics.median(loa_s)
    curl_med = statistics.median(curl_s)
    curl_sync_med = statistics.median(curl_sync_s)
    return {
        "benchmark": "prefetch",
        "title": f"Prefetch: MediaCache.fetch of {files} x {mib} MiB from loopback HTTP",
        "command": COMMAND,
        "n": trials,
        "mb_per_s": round(total_mb / loa_med, 1),
        "curl_mb_per_s": round(total_mb / curl_med, 1),
        "ratio": round(loa_med / curl_med, 2),
        "figures": ["mb_per_s", "ratio"],
        "baselines": {"mb_per_s": "curl_mb_per_s"},
        "labels": {
            "mb_per_s": "MediaCache.fetch throughput, MB/s (10^6 bytes), median of trials",
            "curl_mb_per_s": "curl, same files, same server",
            "ratio": "Loa's time / curl's time (above 1: Loa slower)",
        },
        "detail": {
            "files": files,
            "file_bytes": size,
            "total_mb": round(total_mb, 1),
            "seed": SEED,
            "server": "python -m http.server on 127.0.0.1, own process",
            "loa_s": rounded(loa_s, 3),
            "curl_s": rounded(curl_s, 3),
            "curl_then_sync_s": rounded(curl_sync_s, 3),
            "curl_then_sync_mb_per_s": round(total_mb / curl_sync_med, 1),
            "ratio_vs_curl_then_sync": round(loa_med / curl_sync_med, 2),
            "curl_version": curl_version(),
            "notes": (
                "Loa fsyncs each file and the directory; curl does not, so curl_then_sync "
                "adds `sync FILES` after curl. Served files are in the page cache."
            ),
        },
        "machine": machine_info(),
    }


def curl_version() -> str:
    done = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 x 2 MiB, 2 trials: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.mib, args.trials = QUICK["files"], QUICK["mib"], QUICK["trials"]
    if shutil.which("curl") is None:
        print("bench.prefetch: curl is not installed (make deps)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="loa-bench-prefetch-") as tmp:
        result = run(Path(tmp), args.files, args.mib, args.trials)
    result["command"] = COMMAND + (" --quick" if args.quick else "")
    result["quick"] = args.quick
    write_result("prefetch", result, args.results)
    print(
        f"prefetch: MediaCache.fetch {result['mb_per_s']:.1f} MB/s, curl "
        f"{result['curl_mb_per_s']:.1f} MB/s (curl+sync "
        f"{result['detail']['curl_then_sync_mb_per_s']:.1f} MB/s); ratio {result['ratio']:.2f} "
        f"(Loa's time / curl's), median of {result['n']} trials"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
