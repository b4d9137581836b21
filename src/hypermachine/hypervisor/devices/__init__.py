"""What a VM holds on the host besides QEMU: networks, the cloud-init seed, GPUs."""
