"""Peak resident memory of the current process, for the benchmarks."""
from __future__ import annotations

import resource


def peak_rss_bytes() -> int:
    """Peak resident set of this process image.

    VmHWM is per address space and starts afresh at exec; ``ru_maxrss`` is not
    (Linux carries it over from the forking parent), which would charge a
    benchmark child with its parent's memory."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
