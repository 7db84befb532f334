"""Process settings for a gateway that holds thousands of open streams: descriptors and the garbage collector."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("tokenctl")

# A generation-0 threshold this high makes collections rare on the hot path; full collections, which pause
# every open stream at once (about 0.15 ms per open stream), then come seldom (README, "Many streams").
GC_THRESHOLDS = (50_000, 20, 100)


def tune_for_many_streams() -> None:
    """Move everything allocated at start-up out of the collector's view and make collections rare."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard limit (each open stream needs two descriptors); returns it."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d (%s)", soft, exc)
    if soft < 4096:
        log.warning(
            "open-file limit is %d: at most about %d concurrent streams (raise it with `ulimit -n`)", soft, soft // 2
        )
    return soft
