"""A key's rate limit in etcd (cluster/ratelimit.py), on a real 3-member etcd: two
nodes counting the same key at the same moment never accept more than its limit,
and a request leaves the count once it is a window old."""

from __future__ import annotations

import trio

from etcdcluster import EtcdCluster
from hypermachine.cluster import Etcd
from hypermachine.cluster.ratelimit import RATE_PREFIX, ClusterLimiter


async def test_two_nodes_at_once_accept_no_more_than_the_limit(etcd: EtcdCluster) -> None:
    async with Etcd(etcd.client_urls, timeout_s=5) as client:
        nodes = [ClusterLimiter(client, name) for name in ("r1", "r2")]
        allowed: list[bool] = []

        async def hit(limiter: ClusterLimiter) -> None:
            allowed.append((await limiter.hit("key-race", 5)).allowed)

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(hit, nodes[n % 2])
        assert sorted(allowed) == [False] * 7 + [True] * 5
    etcd.delete_prefix(RATE_PREFIX)


async def test_a_request_leaves_the_count_after_the_window(etcd: EtcdCluster) -> None:
    now = [1_000_000.0]
    async with Etcd(etcd.client_urls, timeout_s=5) as client:
        limiter = ClusterLimiter(client, "r1", window_s=60, clock=lambda: now[0])
        first = await limiter.hit("key-window", 2)
        assert (first.allowed, first.remaining, first.reset_s) == (True, 1, 60)
        now[0] += 30
        assert (await limiter.hit("key-window", 2)).remaining == 0
        refused = await limiter.hit("key-window", 2)
        assert not refused.allowed and refused.retry_after_s == 30
        now[0] += 30.5  # the first request is a window old
        again = await limiter.hit("key-window", 2)
        assert again.allowed and again.remaining == 0
    etcd.delete_prefix(RATE_PREFIX)
