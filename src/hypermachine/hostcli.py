"""``hypermachine host``: probe this host as the server would and print the result."""

from __future__ import annotations

from .config import Settings
from .hypervisor.platform.capabilities import probe_capabilities
from .hypervisor.platform.host import probe_host
from .models import HostCapabilities

__all__ = ["format_capabilities", "host_report"]


def format_capabilities(caps: HostCapabilities) -> str:
    """A human-readable page: the facts, then one line per capability with its reason."""
    gib = caps.memory_bytes / 2**30
    lines = [
        f"QEMU         {caps.qemu_version}",
        f"accelerator  {caps.accelerator} ({caps.accelerator_reason})",
        f"CPU          {caps.cpu_model}, {caps.cpu_count} threads, {caps.cpu_cores} cores",
        f"memory       {gib:.1f} GiB",
        f"swtpm        {caps.swtpm_version or 'not installed'}",
        f"QEMU types   {', '.join(caps.qemu_types) or 'none of interest'}",
        "firmware",
    ]
    for fw in caps.firmware:
        where = f" {fw.code}" if fw.code else ""
        lines.append(f"  {fw.kind:<17}{fw.device:<8}{where}")
    lines.append("capabilities")
    for name, cap in caps.capabilities:
        mark = "yes" if cap.available else "no "
        lines.append(f"  {name:<12} {mark}  {cap.reason}")
    return "\n".join(lines)


def host_report(settings: Settings, *, as_json: bool = False) -> str:
    host = probe_host(settings.qemu_binary, settings.accelerator)
    caps = probe_capabilities(host, settings)
    return caps.model_dump_json(indent=2) if as_json else format_capabilities(caps)
