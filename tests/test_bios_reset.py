"""Reading guest memory through HMP ``xp`` and waiting out SeaBIOS's copy of itself.

The real guest is in test_lifecycle (a reboot inside the copy); here QEMU's answers
are given as text, including ones that cannot be read."""

from __future__ import annotations

import pytest
import trio

from hypermachine.hypervisor.platform import bios_reset
from hypermachine.hypervisor.qemu import qmp_commands

ROM = "00000000fffffff0: 0x00e05bea 0x2f3630f0 0x392f3332 0x00fc0039\r\n"
ZEROS = "00000000000ffff0: 0x00000000 0x00000000 0x00000000 0x00000000\r\n"
COPIED = "00000000000ffff0: 0x00e05bea 0x2f3630f0 0x392f3332 0x00fc0039\r\n"


class Hmp:
    """Answers ``xp`` at the ROM's address with ``ROM`` and at the shadow's with the
    next of ``shadow`` (the last one repeats)."""

    def __init__(self, *shadow: object) -> None:
        self.shadow = list(shadow)
        self.asked: list[str] = []

    async def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        assert command == "human-monitor-command" and arguments is not None
        line = str(arguments["command-line"])
        self.asked.append(line)
        if line.endswith("0xfffffff0"):
            return ROM
        return self.shadow.pop(0) if len(self.shadow) > 1 else self.shadow[0]

    async def execute_with_fd(self, command: str, arguments: dict[str, object], fd: int) -> None:
        raise AssertionError("not used")


async def test_words_are_read_from_xp() -> None:
    hmp = Hmp(ZEROS)
    words = await qmp_commands.read_guest_words(hmp, 0xFFFF_FFF0, 4)
    assert words == (0x00E05BEA, 0x2F3630F0, 0x392F3332, 0x00FC0039)
    assert hmp.asked == ["xp /4xw 0xfffffff0"]


@pytest.mark.parametrize(
    "answer",
    [None, 7, "", "Cannot access memory\r\n", "0xffff0: 0xzz 0x1 0x2 0x3", "0xffff0: 0x1 0x2"],
)
async def test_an_unreadable_answer_reads_as_unknown(answer: object) -> None:
    assert await qmp_commands.read_guest_words(Hmp(answer), 0xF_FFF0, 4) is None


async def test_the_reset_waits_until_the_copy_reaches_the_reset_vector() -> None:
    hmp = Hmp(ZEROS, ZEROS, ZEROS, COPIED)
    assert await bios_reset.wait_until_resettable(hmp, timeout_s=5) is True
    assert len(hmp.asked) == 5  # the ROM once, the shadow until it matched


async def test_a_copy_that_never_ends_is_given_up_on() -> None:
    hmp = Hmp(ZEROS)
    with trio.fail_after(2):
        assert await bios_reset.wait_until_resettable(hmp, timeout_s=0.05) is False
    assert len(hmp.asked) > 2
