"""The simulated server for `benchmarks.vs_official`, in its own process, counting requests in flight.

``python -m benchmarks._sim_serve --port P [--latency LOW HIGH] [--faults RATE]`` serves the simulated
model; ``GET /_sim/stats`` answers, among its counters, ``max_in_flight``: the peak of requests in flight
since the last ``POST /stats/reset``. The count is taken by the server, so both clients compared are
measured the same way.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from pacore_agent.backends.sim import Latency, SimConfig
from pacore_agent.backends.sim_faults import Faults
from pacore_agent.backends.sim_server import SimServer
from pacore_agent.runtime import tune_gc


def counted_server(config: SimConfig, port: int) -> SimServer:
    """A `SimServer` whose counters (``GET /_sim/stats``) ``POST /stats/reset`` sets back to zero."""
    server = SimServer(config, port=port)

    async def reset(request: web.Request) -> web.Response:
        server.engine.reset_stats()
        return web.json_response(server.stats())

    server.app.router.add_post("/stats/reset", reset)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--think-words", type=int, default=32)
    parser.add_argument("--latency", type=float, nargs=2, metavar=("LOW", "HIGH"))
    parser.add_argument("--faults", type=float, default=0.0, help="share of requests answered 429 or 503")
    args = parser.parse_args()
    latency = Latency(uniform=tuple(args.latency)) if args.latency else Latency()
    rates = {"rate_limit": args.faults / 2, "unavailable": args.faults / 2} if args.faults else {}
    config = SimConfig(
        think_words=args.think_words, latency=latency, faults=Faults(rates=rates), record_requests=False
    )
    tune_gc()
    asyncio.run(counted_server(config, args.port).serve_forever())


if __name__ == "__main__":
    main()
