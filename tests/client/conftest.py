"""One real ``hypermachine serve`` for the SDK and CLI tests, keyed, and one booted guest.

The server runs with API keys (an unlimited one the tests use, and a free-tier one
limited to a few requests a minute, for the rate-limit tests). The ``guest`` VM is
booted once for every SDK test that only reads or runs things in it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clientlive import FREE_TIER_LIMIT, Live, create_key, wait_for_log
from hypermachine.client import VmHandle
from realserver import Server, free_port
from support import qemu_pids_for, require_tiny


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    require_tiny()
    data_dir = tmp_path_factory.mktemp("client-server")
    keys = Live(
        Server(data_dir, free_port()),
        create_key(data_dir, "tests", "enterprise"),
        create_key(data_dir, "limited", "free"),
    )
    keys.server.start(("HM_RATE_LIMIT_FREE", str(FREE_TIER_LIMIT)))
    uuids: set[str] = set()
    try:
        yield keys
    finally:
        try:
            with keys.client(timeout=60) as hm:
                for vm in hm.vms.list():
                    uuids.add(vm.info.uuid)
                    vm.delete(force=True)
        finally:
            keys.server.stop()
    assert qemu_pids_for(uuids) == [], "a QEMU process outlived the client tests"


@pytest.fixture(scope="package")
def guest(live: Live) -> Iterator[VmHandle]:
    """A booted tiny guest with its agent up; tests leave it running as they found it."""
    with live.client() as hm:
        vm = hm.vms.create(
            name="sdk-guest", image="tiny", memory_mb=512, disk_gb=1, labels={"suite": "sdk"},
            start=True, wait=True,
        )  # fmt: skip
        assert vm.exec(["true"], wait_agent=120).exit_code == 0
        wait_for_log(vm, "HM-READY")
        yield vm
