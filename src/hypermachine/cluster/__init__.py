"""HyperMachine hosts as one cluster on etcd (docs/cluster.md).

SQLite stays each host's own store; etcd holds what the hosts must agree on. Built so
far: the etcd client (:mod:`.etcd`), a node's registration under a lease, fencing
and the list of nodes (:mod:`.membership`), a node's description of itself
(:mod:`.nodes`), a VM's owner key (:mod:`.ownership`), where a new VM goes
(:mod:`.placement`), signed node-to-node requests (:mod:`.forwarding`), the
cluster-wide view of VMs, ``unknown`` where their node is down (:mod:`.views`), the
cluster's API keys (:mod:`.keys`), each tenant's live VMs of every node for its quota
(:mod:`.quota`), each tenant's stored bytes of every node for its storage quota
(:mod:`.storage`), each key's requests of every node for its rate limit
(:mod:`.ratelimit`), a down node's shared-storage VMs booted again on exactly one
survivor (:mod:`.restart`) and the node's watchdog fed its fencing deadline
(:mod:`.feeder`).

May import: ``config``, ``errors``, ``models``, ``states``, ``store``,
``security.caller``, ``security.keybook`` and ``security.models`` (the keys it keeps),
``security.ratelimit`` (the window it keeps), ``security.admission`` (the storage
quota's rule), ``hypervisor.manager`` (a node describes
its own VMs and budget), ``watchdog`` (the socket it feeds).
"""

from .etcd import Etcd, EtcdError, EtcdUnavailable, LeaseLost
from .membership import Membership

__all__ = ["Etcd", "EtcdError", "EtcdUnavailable", "LeaseLost", "Membership"]
