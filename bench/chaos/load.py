"""Many clients streaming at once (each from its own 127.0.0.x address) while /health is polled."""
from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp


async def _stream(url: str, key: str, n: int) -> int | str:
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + n % 250}", 0))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as s:
            async with s.post(url + "/Llama_stream", json={"input_data": f"Say hello to client {n}."},
                              headers={"X-API-Key": key}) as r:
                await r.read()
                return r.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        return type(e).__name__


async def run_streams(host: str, port: int, api_key: str, clients: int) -> dict:
    url = f"http://{host}:{port}"
    samples: list[float] = []
    done = asyncio.Event()

    async def poll_health() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            while not done.is_set():
                t0 = time.perf_counter()
                try:
                    async with s.get(url + "/health") as r:
                        await r.read()
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                samples.append(time.perf_counter() - t0)
                await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll_health())
    results = await asyncio.gather(*(_stream(url, api_key, i) for i in range(clients)))
    done.set()
    await poller
    p95 = statistics.quantiles(samples, n=20)[-1] if len(samples) >= 2 else (samples[0] if samples else 0.0)
    return {"answered": sum(1 for r in results if r == 200), "busy": sum(1 for r in results if r in (429, 503)),
            "5xx": sum(1 for r in results if isinstance(r, int) and r >= 500 and r != 503),
            "other": sum(1 for r in results if not (r == 200 or r in (429, 503))),
            "health_p95_ms": round(p95 * 1000),
            "examples": sorted({str(r) for r in results if not (r == 200 or r in (429, 503))})}
