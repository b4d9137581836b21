"""A VM's disk: qcow2 overlays and layers, snapshot folders, QEMU's side of snapshots."""
