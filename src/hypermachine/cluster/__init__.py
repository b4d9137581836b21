"""HyperMachine hosts as one cluster on etcd (docs/cluster.md).

SQLite stays each host's own store; etcd holds what the hosts must agree on. Built so
far: the etcd client (:mod:`.etcd`), a node's registration under a lease and the
list of nodes (:mod:`.membership`), a node's description of itself (:mod:`.nodes`).
"""

from .etcd import Etcd, EtcdError, EtcdUnavailable, LeaseLost
from .membership import Membership

__all__ = ["Etcd", "EtcdError", "EtcdUnavailable", "LeaseLost", "Membership"]
