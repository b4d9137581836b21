"""The POSIX ACL entry that opens a folder to the QEMU user: search only, for it alone."""

from __future__ import annotations

from pathlib import Path

from hypermachine.hypervisor.vmfiles.acl import (
    GROUP,
    GROUP_OBJ,
    MASK,
    OTHER,
    USER,
    USER_OBJ,
    decode,
    encode,
    grant_search,
    grants_search,
    with_search,
)

NONE = 0xFFFFFFFF
BASE = [(USER_OBJ, 0o7, NONE), (GROUP_OBJ, 0o0, NONE), (OTHER, 0o0, NONE)]  # a 0700 folder


def test_search_is_added_for_one_user_and_the_mask() -> None:
    assert sorted(with_search(BASE, 999)) == sorted(
        [*BASE, (USER, 0o1, 999), (MASK, 0o1, NONE)]
    )  # the group and others gain nothing: GROUP_OBJ stays 0


def test_existing_entries_are_kept_and_the_grant_is_idempotent() -> None:
    acl = [*BASE, (USER, 0o6, 999), (USER, 0o7, 1000), (GROUP, 0o5, 50), (MASK, 0o4, NONE)]
    granted = with_search(acl, 999)
    assert sorted(granted) == sorted(
        [*BASE, (USER, 0o7, 999), (USER, 0o7, 1000), (GROUP, 0o5, 50), (MASK, 0o5, NONE)]
    )
    assert sorted(with_search(granted, 999)) == sorted(granted)


def test_the_xattr_format_round_trips_in_kernel_order() -> None:
    data = encode(with_search(BASE, 999))
    assert data[:4] == b"\x02\x00\x00\x00"  # version 2, little-endian
    assert [tag for tag, _, _ in decode(data)] == [USER_OBJ, USER, GROUP_OBJ, MASK, OTHER]


def test_a_chmod_masks_the_entry_and_a_grant_restores_it(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    assert not grants_search(folder, 999)
    grant_search(folder, 999)
    assert grants_search(folder, 999) and folder.stat().st_mode & 0o777 == 0o710
    folder.chmod(0o700)  # the mask becomes the group bits: ---
    assert not grants_search(folder, 999) and not grants_search(folder, 1000)
    grant_search(folder, 999)
    assert grants_search(folder, 999)
