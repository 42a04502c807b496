"""Waiting for resources a placement group holds (slow: starts Ray)."""
import threading
import time

import pytest

from arxivcls.raycluster import wait_for_resources

pytestmark = pytest.mark.slow


def test_the_wait_returns_once_a_removed_placement_group_s_cpus_are_free(ray_local):
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 2}])
    ray_local.get(group.ready())
    assert ray_local.available_resources().get("CPU", 0) == 0
    threading.Timer(1.5, remove_placement_group, args=(group,)).start()
    started = time.monotonic()
    free = wait_for_resources({"CPU": 2}, timeout_s=60)
    assert free["CPU"] == 2
    assert 1.5 <= time.monotonic() - started < 30


def test_the_wait_gives_up_after_its_timeout_with_what_is_free(ray_local):
    from ray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 1}])
    ray_local.get(group.ready())
    started = time.monotonic()
    free = wait_for_resources({"CPU": 2}, timeout_s=1)
    assert 1 <= time.monotonic() - started < 10
    assert free["CPU"] == 1
    remove_placement_group(group)
