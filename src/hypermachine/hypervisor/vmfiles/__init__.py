"""A VM's folders on the host: where its files live, who owns them, how the server
writes them.

:mod:`.layout` places a VM's disk and logs under the data dir and its sockets under
the short run dir; :mod:`.nofollow` is the server's file I/O in folders the QEMU
user owns (no symlink followed); :mod:`.confine` the unprivileged user QEMU and
swtpm run as, and :mod:`.acl` the search-only ACL entry that lets it reach them.

May import: ``config``.
"""
