"""The tests' etcd cluster is a real one: three members, one key space, a quorum that
survives one member's loss and a member that rejoins."""

from __future__ import annotations

import base64

import httpx

from etcdcluster import EtcdCluster


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def put(url: str, key: str, value: str) -> None:
    answer = httpx.post(f"{url}/v3/kv/put", json={"key": b64(key), "value": b64(value)}, timeout=10)
    assert answer.status_code == 200, answer.text


def get(url: str, key: str) -> str | None:
    answer = httpx.post(f"{url}/v3/kv/range", json={"key": b64(key)}, timeout=10)
    assert answer.status_code == 200, answer.text
    kvs = answer.json().get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def test_three_members_share_one_key_space(etcd: EtcdCluster) -> None:
    first, second, third = etcd.members
    listed = httpx.post(f"{first.client_url}/v3/cluster/member/list", json={}, timeout=10)
    names = sorted(m["name"] for m in listed.json()["members"])
    assert names == ["e1", "e2", "e3"]
    put(first.client_url, "harness/a", "one")
    assert get(third.client_url, "harness/a") == "one"

    etcd.stop_member(second)
    try:
        put(third.client_url, "harness/b", "two")  # two of three: still a quorum
        assert get(first.client_url, "harness/b") == "two"
    finally:
        etcd.start_member(second)
    assert get(second.client_url, "harness/b") == "two", "the member rejoined and caught up"
