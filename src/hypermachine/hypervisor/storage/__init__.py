"""A VM's disk: qcow2 overlays and layers, snapshot folders, QEMU's side of snapshots.

:mod:`.disks` makes overlays with qemu-img; :mod:`.layers` keeps a VM's disk as a
chain of layers named by ``disk.qcow2``; :mod:`.snapfiles` writes snapshot folders
and the resume image (then renames them into place); :mod:`.snapshots` is what QEMU
does for a snapshot (migration blockers, freezing the disk, RAM to and from a
descriptor).

May import: ``errors``, ``models``, ``hypervisor.qemu``, ``hypervisor.vmfiles`` (a new
layer is written into a folder the QEMU user owns).
"""
