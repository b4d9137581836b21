"""Everything that touches QEMU, in rooms, with the manager on top.

At this level: :mod:`.manager` (every VM operation and the VM lifecycle) and its
delegates :mod:`.readopt` (after a restart), :mod:`.provision` (a new VM's disk and
platform), :mod:`.snapshot_service` (snapshots, restore, fork, hibernate),
:mod:`.metrics` (a live VM's figures), :mod:`.migration_service` (live migration to a
fresh QEMU, with :mod:`.migration` its QEMU and file side); :mod:`.vm_argv` (a VM
record -> the argv builder's plain data) and :mod:`.ports` (what the manager needs
from outside).

The rooms below, each importing only the rooms listed in its own docstring:

    vmfiles/   a VM's folders: layout, no-follow file I/O, the QEMU user, ACLs
    qemu/      the QEMU process: argv (the one builder), QMP bridge and vocabulary,
               launching and supervising, fault containment
    devices/   what a VM holds on the host: networks (passt, taps, nftables), the
               cloud-init seed, PCI/IOMMU and GPUs, and the hooks acquiring them
    platform/  host facts and capabilities, firmware, vTPM, memory encryption
    storage/   the disk: qcow2 overlays and layers, snapshot folders, QEMU's side
               of snapshots
    guest/     the guest: its agent (protocol and channel), exec and files, console

May import: ``concurrently``, ``config``, ``errors``, ``events``, ``models``,
``security.admission``, ``security.caller``, ``states``, ``store``, ``telemetry``.
"""
