"""The platform a VM runs on: host facts, capabilities, firmware, vTPM, memory encryption.

:mod:`.host` the accelerator, QEMU's version and ``check_supported``;
:mod:`.capabilities` the host capability map (sysfs, /dev, a probe QEMU);
:mod:`.firmware` the firmware sets from QEMU's descriptors; :mod:`.tpm` one swtpm
per VM; :mod:`.vmplatform` the manager's hooks resolving a VM's firmware, vTPM and
SEV/TDX into the argv builder's ``Platform``, and attestation.

May import: ``config``, ``errors``, ``models``, ``hypervisor.vmfiles``,
``hypervisor.qemu``, ``hypervisor.devices.pci`` (IOMMU groups for the capability map).
"""
