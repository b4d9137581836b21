"""The QEMU process: its command line, QMP, launching and supervising it.

:mod:`.argv` is the one place that formats QEMU options, from plain data types;
:mod:`.qmp` the one module that touches asyncio (qemu.qmp bridged to Trio);
:mod:`.qmp_commands` the one place that names QMP commands and reads their
answers; :mod:`.machine` one live QEMU (spawn, QMP session, events, exit report);
:mod:`.faults` keeps a VM task's failure inside that VM.

May import: ``errors``, ``models``, ``hypervisor.vmfiles``.
"""
