"""Search strategies: how many of the most sensitive layers fall back to float."""
from __future__ import annotations

import abc
from typing import Callable

from amct.auto_calibration._named import resolve

#: ``trial(k) -> ok``: quantize with the k most sensitive layers in float and
#: report whether the user's metric accepts the result.
Trial = Callable[[int], bool]


class SearchStrategy(abc.ABC):
    """Finds a fallback count using ``trial``; trial(0) is known to fail."""

    name: str = ""

    @abc.abstractmethod
    def search(self, n_layers: int, trial: Trial) -> int | None:
        """The chosen k in 1..n_layers-1, or None if none passes."""


class BinarySearch(SearchStrategy):
    """Smallest passing k in 1..n_layers-1, assuming that falling back more
    layers never makes the metric worse (then bisection is exact and needs
    about log2(n) trials).  k = n_layers would leave nothing quantized, so it
    is never tried."""

    name = "BinarySearch"

    def search(self, n_layers: int, trial: Trial) -> int | None:
        lo, hi = 1, n_layers - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            if trial(mid):
                best = mid
                hi = mid - 1
            else:
                lo = mid + 1
        return best


_STRATEGIES = {"BinarySearch": BinarySearch}


def get_strategy(spec) -> SearchStrategy:
    return resolve(spec, SearchStrategy, _STRATEGIES, "strategy")
