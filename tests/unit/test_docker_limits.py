"""How a pool's cpu limit becomes Docker's CFS period and quota, without an engine.

A short period keeps interactive cells from stalling a whole default period (100 ms) once
the quota is spent; below the engine's minimum quota the period grows instead. The
container that gets these values is checked against a real engine in
``tests/test_docker_sandbox.py``.
"""

from __future__ import annotations

import pytest

from server.kernels.docker import CPU_PERIOD_US, CPU_QUOTA_MIN_US, cpu_period_and_quota


def test_cpu_limit_keeps_a_short_period_down_to_the_engines_minimum_quota() -> None:
    assert cpu_period_and_quota(1.0) == (CPU_PERIOD_US, CPU_PERIOD_US)
    assert cpu_period_and_quota(0.5) == (CPU_PERIOD_US, CPU_PERIOD_US // 2)
    assert cpu_period_and_quota(2.0) == (CPU_PERIOD_US, 2 * CPU_PERIOD_US)
    period, quota = cpu_period_and_quota(0.05)
    assert quota == CPU_QUOTA_MIN_US and quota / period == pytest.approx(0.05)
