"""``premium_share`` on live traffic: the threshold is a quantile of this deployment's own recent scores.

A router trained on one mix of prompts scores another mix differently (trained on maths and trivia,
it sent 91 % of coding prompts to premium at a 30 % setting). So the threshold that sends a share of
traffic to premium is read from a rolling window of the scores this gateway has given its own user
turns; until the window holds ``warmup`` scores, the training prompts' quantiles stand in.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable


class LiveThreshold:
    def __init__(self, share: float, window: int, warmup: int, before_warmup: Callable[[float], float]) -> None:
        self.share = share
        self.window = window
        self.warmup = warmup
        self._before_warmup = before_warmup
        self._arrival: deque[float] = deque()
        self._sorted: list[float] = []

    def observe(self, score: float) -> None:
        self._arrival.append(score)
        bisect.insort(self._sorted, score)
        if len(self._arrival) > self.window:
            old = self._arrival.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    @property
    def samples(self) -> int:
        return len(self._sorted)

    @property
    def live(self) -> bool:
        return self.samples >= max(1, self.warmup)

    def value(self) -> float:
        """The score at or above which a turn goes to premium."""
        if not self.live:
            return self._before_warmup(self.share)
        if self.share <= 0:
            return float("inf")
        if self.share >= 1:
            return float("-inf")
        # the k highest scores go to premium: the threshold is the k-th highest
        k = max(1, round(self.share * len(self._sorted)))
        return self._sorted[len(self._sorted) - k]
