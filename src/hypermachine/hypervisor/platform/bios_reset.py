"""A reset that cannot catch SeaBIOS halfway through copying itself into shadow RAM.

At the start of its POST, SeaBIOS maps the chipset's f-segment (``0xf0000``) to RAM
(the PAM registers) and only then copies itself there from its ROM. QEMU keeps that
mapping across a reset, and SeaBIOS, finding RAM already mapped, does not copy
again. A reset inside the copy therefore restarts the vCPU into a half-made copy,
zeros at ``f000:e05b``, and the guest never boots again. Under TCG that window is
tens of milliseconds right after ``running``, long enough for an API client that
reboots a VM it just started.

The copy runs upwards and the reset vector is its last bytes, so the copy is
complete (or not begun) exactly when the f-segment's last 16 bytes read the same as
the ROM's, at the top of 4 GiB. :func:`wait_until_resettable` waits for that.
"""

from __future__ import annotations

import logging

import trio

from ..qemu import qmp_commands
from ..qemu.qmp_commands import Target

__all__ = ["wait_until_resettable"]

_log = logging.getLogger(__name__)

ROM_RESET_VECTOR = 0xFFFF_FFF0
"""The BIOS ROM's last 16 bytes: where a vCPU starts after a reset."""
SHADOW_RESET_VECTOR = 0xF_FFF0
"""The same 16 bytes in the f-segment, where the reset vector's far jump lands."""
_WORDS = 4
POLL_S = 0.005


async def wait_until_resettable(target: Target, timeout_s: float) -> bool:
    """Wait until the f-segment's reset vector is the ROM's; False if it was not within
    ``timeout_s`` (a guest that stays mid-copy that long is not running its firmware,
    and is reset anyway) or QEMU's answers could not be read."""
    rom = await qmp_commands.read_guest_words(target, ROM_RESET_VECTOR, _WORDS)
    if rom is None:
        return False
    with trio.move_on_after(timeout_s):
        while await qmp_commands.read_guest_words(target, SHADOW_RESET_VECTOR, _WORDS) != rom:
            await trio.sleep(POLL_S)
        return True
    _log.warning(
        "the guest's BIOS was still copying itself after %s s; resetting anyway", timeout_s
    )
    return False
