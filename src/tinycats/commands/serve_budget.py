"""What one client may ask of a public ``tinycats serve`` a minute: requests, and drawings apart.

A drawing runs the DiT at every step for every cat (twice with guidance), a classification
one forward pass, so each has its own limit. Clients are counted in fixed one-minute windows, shared
by all: at most twice a limit can pass around a window's turn, and the counts of a whole window
are dropped at once, so the memory held is that of one minute's clients, however many come.
"""

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from tinycats.errors import TinyCatsError

WINDOW_S = 60


@dataclass(frozen=True)
class Budget:
    """What one client (one address) may ask a minute; 0 is no limit.

    Args:
        requests_per_minute: requests of any kind (the page, the API, drawings included).
        draws_per_minute: drawings (``/api/draw``), also counted as requests.
    """

    requests_per_minute: int = 0
    draws_per_minute: int = 0

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "draws_per_minute"):
            if getattr(self, name) < 0:
                raise TinyCatsError(
                    f"--budget.{name} {getattr(self, name)} is negative: set 0 for no limit."
                )

    def describe(self) -> str:
        """The budget in words, for the start-up log."""
        if not (self.requests_per_minute or self.draws_per_minute):
            return "no per-client limit"
        return (
            f"{self.requests_per_minute or 'unlimited'} requests and "
            f"{self.draws_per_minute or 'unlimited'} drawings a minute per client address"
        )


NO_BUDGET = Budget()


@dataclass(frozen=True)
class Refusal:
    """Why a request is over its client's budget, and in how many seconds to try again."""

    message: str
    retry_after_s: int


class ClientBudgets:
    """Counts each client's requests and drawings in the current window, refusing those over."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = {"requests": budget.requests_per_minute, "drawings": budget.draws_per_minute}
        self._clock = clock
        self._window = -1
        self._counts: Counter[tuple[str, str]] = Counter()

    def charge(self, client: str, drawing: bool) -> Refusal | None:
        """Count a request of ``client`` (a drawing too, if ``drawing``), or refuse it unseen."""
        now = self._clock()
        window = int(now // WINDOW_S)
        if window != self._window:
            self._window, self._counts = window, Counter()
        kinds = ("requests", "drawings") if drawing else ("requests",)
        for kind in kinds:
            limit = self.limits[kind]
            if limit and self._counts[client, kind] >= limit:
                return Refusal(
                    f"Too many {kind} from {client}: the limit is {limit} a minute.",
                    max(1, math.ceil((window + 1) * WINDOW_S - now)),
                )
        for kind in kinds:
            self._counts[client, kind] += 1
        return None
