"""Cache scan: `MediaCache.verify_all` over a 2 GB cache (200 media of 10 MiB), full (every file
re-hashed) against ``sha256sum`` over the same files in the same run, and quick (no hashing).

The cache is built once in a temporary directory: random bytes from a fixed seed, each file
named by its SHA-256 as `fetch` names it, and deleted at the end. Page cache: the files were
just written, so they are likely cached already, but that is not assumed. Each tool runs twice
and the second (warm) run is the figure for both: the first run of either pays for whatever was
not in memory, the second reads from the page cache, so the figures compare hashing and file
handling, not the disk. Both runs of both tools are in the result file. The order is Loa,
sha256sum, Loa, sha256sum. ``sha256sum`` gets all 200 files in one invocation; its output is
checked against the names. ``openssl dgst -sha256`` over the same files is a second reference in
the detail (coreutils' sha256sum does not use the CPU's SHA instructions; OpenSSL, which
Python's hashlib uses, does). Quick mode runs after the full runs (so every file has a record, as
on a station after its first full check), also twice, second run reported.

    .venv/bin/python -m bench.cache_scan [--files 200] [--mib 10]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.cache import MediaCache
from bench.common import RESULTS, machine_info, rounded, write_result

COMMAND = ".venv/bin/python -m bench.cache_scan"
QUICK = {"files": 20, "mib": 2}
MIB = 1024 * 1024
SEED = 20240602


def build_cache(root: Path, files: int, mib: int, seed: int = SEED) -> list[Path]:
    """``files`` random media of ``mib`` MiB, each named by its SHA-256."""
    root.mkdir(parents=True)
    rng = random.Random(seed)
    paths = []
    for _ in range(files):
        data = rng.randbytes(mib * MIB)
        path = root / hashlib.sha256(data).hexdigest()
        path.write_bytes(data)
        paths.append(path)
    return sorted(paths)


def time_verify(cache: MediaCache, *, quick: bool) -> float:
    start = time.perf_counter()
    bad = cache.verify_all(quick=quick)
    elapsed = time.perf_counter() - start
    if bad:
        raise RuntimeError(f"verify_all(quick={quick}) found {len(bad)} bad files in a good cache")
    return elapsed


def time_sha256sum(paths: list[Path]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        ["sha256sum", *(str(p) for p in paths)], capture_output=True, text=True, check=True
    )
    elapsed = time.perf_counter() - start
    for line, path in zip(done.stdout.splitlines(), paths, strict=True):
        if line.split()[0] != path.name:
            raise RuntimeError(f"sha256sum disagrees with the name of {path}")
    return elapsed


def time_openssl(paths: list[Path]) -> float | None:
    """``openssl dgst -sha256`` over the same files (a second reference: OpenSSL uses the CPU's
    SHA instructions, as Python's hashlib does; coreutils' sha256sum may not)."""
    if shutil.which("openssl") is None:
        return None
    start = time.perf_counter()
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", *(str(p) for p in paths)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    for line, path in zip(done.stdout.splitlines(), paths, strict=True):
        if line.rsplit("= ", 1)[-1].strip() != path.name:
            raise RuntimeError(f"openssl disagrees with the name of {path}")
    return elapsed


def run(tmp: Path, files: int, mib: int) -> dict[str, Any]:
    root = tmp / "cache"
    t = time.perf_counter()
    paths = build_cache(root, files, mib)
    build_s = time.perf_counter() - t
    total_mb = files * mib * MIB / 1e6
    cache = MediaCache(root)
    loa_full: list[float] = []
    sha: list[float] = []
    for _ in range(2):
        loa_full.append(time_verify(cache, quick=False))
        sha.append(time_sha256sum(paths))
    loa_quick = [time_verify(cache, quick=True) for _ in range(2)]
    openssl = [time_openssl(paths) for _ in range(2)]
    openssl_warm = openssl[1]
    return {
        "benchmark": "cache_scan",
        "title": f"Cache scan: verify_all over {files} x {mib} MiB, warm page cache",
        "command": COMMAND,
        "n": files,
        "mb_per_s": round(total_mb / loa_full[1], 1),
        "sha256sum_mb_per_s": round(total_mb / sha[1], 1),
        "ratio": round(loa_full[1] / sha[1], 2),
        "quick_ms": round(loa_quick[1] * 1000, 2),
        "figures": ["mb_per_s", "ratio", "quick_ms"],
        "baselines": {"mb_per_s": "sha256sum_mb_per_s"},
        "labels": {
            "mb_per_s": "verify_all(quick=False) throughput, MB/s (10^6 bytes), warm run",
            "sha256sum_mb_per_s": "sha256sum, same files, warm run",
            "ratio": "Loa's time / sha256sum's time, warm runs (above 1: Loa slower)",
            "quick_ms": "verify_all(quick=True), whole cache, warm run",
        },
        "detail": {
            "files": files,
            "file_bytes": mib * MIB,
            "total_mb": round(total_mb, 1),
            "seed": SEED,
            "page_cache": (
                "each tool run twice (order: Loa, sha256sum, Loa, sha256sum); the figures are "
                "the second (warm) runs, which read from the page cache, not the disk"
            ),
            "loa_full_s_runs": rounded(loa_full, 3),
            "sha256sum_s_runs": rounded(sha, 3),
            "loa_quick_ms_runs": rounded([q * 1000 for q in loa_quick], 2),
            "openssl_dgst_s_runs": [None if o is None else round(o, 3) for o in openssl],
            "openssl_dgst_mb_per_s": (
                None if openssl_warm is None else round(total_mb / openssl_warm, 1)
            ),
            "ratio_vs_openssl_dgst": (
                None if openssl_warm is None else round(loa_full[1] / openssl_warm, 2)
            ),
            "openssl_version": tool_version("openssl", "version"),
            "chunk_bytes": cache.chunk_bytes,
            "build_s": round(build_s, 1),
            "sha256sum_version": tool_version("sha256sum"),
        },
        "machine": machine_info(),
    }


def tool_version(tool: str, flag: str = "--version") -> str:
    if shutil.which(tool) is None:
        return ""
    done = subprocess.run([tool, flag], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0] if done.stdout else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--mib", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="20 x 2 MiB: a smoke run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.mib = QUICK["files"], QUICK["mib"]
    if shutil.which("sha256sum") is None:
        print("bench.cache_scan: sha256sum (coreutils) is not installed", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="loa-bench-cache-scan-") as tmp:
        result = run(Path(tmp), args.files, args.mib)
    result["command"] = COMMAND + (" --quick" if args.quick else "")
    result["quick"] = args.quick
    write_result("cache_scan", result, args.results)
    print(
        f"cache_scan: verify_all full {result['mb_per_s']:.1f} MB/s, sha256sum "
        f"{result['sha256sum_mb_per_s']:.1f} MB/s, ratio {result['ratio']:.2f} (Loa's time / "
        f"sha256sum's, warm runs); quick {result['quick_ms']:.2f} ms for {result['n']} files"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
