"""Client CPU per request of the HTTP client libraries the gateway could use for backends.

    .venv/bin/python bench/http_clients.py [--n 3000] [--rounds 3]

The fast backend of bench/toolcall_cpu.py (raw asyncio HTTP/1.1, keep-alive, its own process);
this process runs one client at a time, sequential GETs then 16 concurrent, and reports this
process's CPU (``time.process_time()``) per request. Rounds interleave the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


async def _httpx(url: str, n: int, conc: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url) as c:
        await _drive(lambda: c.get("/accounts/A1/balance"), n, conc, lambda r: r.json())


async def _httpcore(url: str, n: int, conc: int) -> None:
    import httpcore

    async with httpcore.AsyncConnectionPool() as pool:
        target = f"{url}/accounts/A1/balance"

        async def one() -> Any:
            return await pool.request("GET", target)

        await _drive(one, n, conc, lambda r: json.loads(r.content))


async def _aiohttp(url: str, n: int, conc: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(base_url=url) as s:
        async def one() -> Any:
            async with s.get("/accounts/A1/balance") as r:
                return await r.json()

        await _drive(one, n, conc, lambda r: r)


async def _drive(one: Any, n: int, conc: int, parse: Any) -> None:
    for _ in range(50):
        parse(await one())
    RESULT.clear()
    for label, c in (("seq", 1), ("conc16", conc)):
        left = [n]

        async def worker(left: list[int] = left) -> None:
            while left[0] > 0:
                left[0] -= 1
                parse(await one())

        t0, w0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        RESULT[label] = ((time.process_time() - t0) / n * 1e3, n / (time.perf_counter() - w0))


RESULT: dict[str, tuple[float, float]] = {}
CLIENTS = {"httpx": _httpx, "httpcore": _httpcore, "aiohttp": _aiohttp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        asyncio.run(CLIENTS[args.one[0]](args.one[1], args.n, 16))
        print(json.dumps(RESULT))
        return
    sys.path.insert(0, str(HERE))
    import toolcall_cpu

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps(toolcall_cpu._spec()))
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        backend = subprocess.Popen([sys.executable, str(HERE / "toolcall_cpu.py"),
                                    "--serve-backend", str(spec)], stdout=subprocess.PIPE,
                                   text=True, env=env)
        assert backend.stdout is not None
        url = f"http://127.0.0.1:{int(backend.stdout.readline())}"
        rows: dict[str, list[dict[str, list[float]]]] = {k: [] for k in CLIENTS}
        load = [os.getloadavg()[0]]
        try:
            for _ in range(args.rounds):
                for name in CLIENTS:
                    out = subprocess.run([sys.executable, __file__, "--n", str(args.n),
                                          "--one", name, url], capture_output=True, text=True,
                                         check=True, env=env)
                    rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            backend.terminate()
            backend.wait(10)
        load.append(os.getloadavg()[0])
    print("| client | sequential CPU ms/request | 16 concurrent CPU ms/request | 16 conc req/s |")
    print("|---|---|---|---|")
    for name, rs in rows.items():
        seq = ", ".join(f"{r['seq'][0]:.3f}" for r in rs)
        conc = ", ".join(f"{r['conc16'][0]:.3f}" for r in rs)
        rate = ", ".join(f"{r['conc16'][1]:,.0f}" for r in rs)
        print(f"| {name} | {seq} | {conc} | {rate} |")
    print(f"load average (1 min) {load[0]:.2f} → {load[1]:.2f}")


if __name__ == "__main__":
    main()
