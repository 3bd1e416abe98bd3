"""One cluster's collect side: the connection loop (:mod:`worker`), one observer per
observed thing (:mod:`key_secret_observer`, :mod:`controller_probe`,
:mod:`sealed_secret_observer`), the least-privilege :mod:`verifier`, the
:mod:`write_behind` to the store, around one :class:`state.ClusterState` they share
explicitly.  The read side only observes: nothing here writes to a cluster."""
