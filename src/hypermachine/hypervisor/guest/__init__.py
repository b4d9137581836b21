"""Reaching into the guest: its agent, exec, files and the serial console.

:mod:`.agent_protocol` checks everything the agent sends (pure);
:mod:`.guest_agent` speaks qemu-ga from Trio; :mod:`.service` offers exec, files and
agent status to the operations; :mod:`.console` tails and rotates the console log
and runs interactive sessions.

May import: ``config``, ``errors``, ``events``, ``models``, ``store``,
``hypervisor.vmfiles``.
"""
