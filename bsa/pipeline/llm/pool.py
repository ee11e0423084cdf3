"""An endpoint's servers: its base_url and its `replicas` (docs/llm.md, Endpoint pools).

Each attempt goes to the live replica with the fewest requests in flight relative to its concurrency (each
replica keeps its own rate limits). A replica failing `cool_off_after` times in a row (refused connections,
timeouts, 5xx) rests `cool_off` seconds, then is tried again; one its own health check finds down is also
set aside, and when every replica is down the run stops with EndpointDown naming each and why. A pool of
one replica is the plain endpoint: its health check raises EndpointDown directly.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bsa.pipeline.config import EndpointConfig
from bsa.pipeline.errors import EndpointDown
from bsa.pipeline.llm.client import EndpointClient, EndpointHealth, SendError

COOLING_KINDS = frozenset({"connect", "connection", "timeout", "dns"})  # plus any 5xx
POLL = 0.01  # seconds between looks for a free replica when all are busy or resting


@dataclass(eq=False)
class Replica:
    """One server of a pool, its load and its state."""

    client: EndpointClient
    health: EndpointHealth
    concurrency: int
    in_flight: int = 0
    failures: int = 0  # cooling failures in a row
    resting_until: float = 0.0
    down: str = ""  # why its health check found it down ("" while it is not)

    @property
    def url(self) -> str:
        return self.client.base_url


def replica_configs(config: EndpointConfig) -> list[EndpointConfig]:
    """The endpoint's own server first, then each replica with its settings over the endpoint's."""
    configs = [config]
    for replica in config.replicas:
        update = {name: value for name, value in replica.model_dump().items() if value is not None}
        configs.append(config.model_copy(update=update))
    return configs


class EndpointPool:
    """Chooses a replica for each attempt and keeps track of failing ones."""

    def __init__(self, name: str, config: EndpointConfig, base_url: str):
        self.name, self.config = name, config
        self.replicas = []
        for index, replica in enumerate(replica_configs(config)):
            url = base_url if index == 0 else replica.base_url  # the embedded server's URL is known late
            self.replicas.append(Replica(EndpointClient(name, replica, url), EndpointHealth(name, replica, url),
                                         replica.concurrency))

    @property
    def pooled(self) -> bool:
        return len(self.replicas) > 1

    def workers(self) -> int:
        """Requests in flight across the pool."""
        return sum(replica.concurrency for replica in self.replicas)

    def set_base_url(self, base_url: str) -> None:
        """A restarted embedded server's new URL (an embedded endpoint has no replicas)."""
        self.replicas[0].client.set_base_url(base_url)

    async def acquire(self) -> Replica:
        """The replica for the next attempt (waits while all are busy or resting)."""
        while True:
            now = time.monotonic()
            live = [r for r in self.replicas if r.resting_until <= now and r.in_flight < r.concurrency]
            if live:
                replica = min(live, key=lambda r: (r.in_flight / r.concurrency, bool(r.down), r.failures))
                replica.in_flight += 1
                return replica
            await asyncio.sleep(POLL)

    def release(self, replica: Replica) -> None:
        replica.in_flight -= 1

    def answered(self, replica: Replica) -> None:
        replica.health.answered()
        replica.failures, replica.down = 0, ""

    def failed(self, replica: Replica, err: SendError) -> None:
        """Count a failed attempt on `replica`: rest it when it keeps failing; raises EndpointDown when the
        endpoint (every replica of a pool) is down."""
        if not self.pooled:
            replica.health.failed(err)
            return
        try:
            replica.health.failed(err)
        except EndpointDown as down:
            replica.down = str(down)
        if err.kind in COOLING_KINDS or err.status >= 500 or replica.down:
            replica.failures += 1
            if replica.failures >= self.config.cool_off_after or replica.down:
                replica.resting_until = time.monotonic() + replica.health.config.cool_off
                replica.failures = 0
        if all(r.down for r in self.replicas):
            causes = "; ".join(f"{r.url}: {r.down.partition(' is down: ')[2] or r.down}" for r in self.replicas)
            raise EndpointDown(f"endpoint '{self.name}' (model '{self.config.model}'): every replica is down: "
                               f"{causes}")

    def status(self) -> dict[str, str]:
        """Each replica's state now: "live", "resting" or why it is down."""
        now = time.monotonic()
        return {r.url: r.down or ("resting" if r.resting_until > now else "live") for r in self.replicas}
