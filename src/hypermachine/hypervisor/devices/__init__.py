"""What a VM holds on the host besides QEMU: networks, the cloud-init seed, GPUs.

:mod:`.network` plans a VM's network (pure) and gives the argv builder its NIC;
:mod:`.passt` runs a NAT VM's passt, :mod:`.hostnet` taps and free ports,
:mod:`.firewall` the nftables rules; :mod:`.cloudinit` writes the NoCloud seed;
:mod:`.pci` reads PCI/IOMMU/mdev facts from sysfs and :mod:`.vfio` allocates GPUs;
:mod:`.resources` is the manager's four hooks over all of them.

May import: ``config``, ``errors``, ``models``, ``hypervisor.vmfiles``,
``hypervisor.qemu.argv`` (the plain types it fills in).
"""
