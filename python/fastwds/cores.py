"""How many cores this process may use, which sizes the worker pools.

In a container with a CPU quota (``docker --cpus 4``, a Kubernetes CPU limit) or under
``taskset``, ``os.cpu_count()`` still says how many cores the host has: sized by it, a 4-CPU pod
on a 64-core node would start 64 conversion workers of ~250 MiB each on 4 cores' time. loky's
``cpu_count`` takes the smallest of the host's cores, the process's CPU affinity and the cgroup
(v1 or v2) quota, and ``LOKY_MAX_CPU_COUNT`` when set."""

from __future__ import annotations


def available_cores() -> int:
    from loky import cpu_count  # here, not at import: ~30 ms that only sizing a pool needs

    return cpu_count()
