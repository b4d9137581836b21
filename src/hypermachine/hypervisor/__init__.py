"""Everything that touches QEMU: argv building, QMP, processes, disks, host facts."""
