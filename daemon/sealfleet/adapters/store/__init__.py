"""SQLite store: the rebuildable inventory beside the keystore, audit log and job journal.

``Store`` (store.py) is the entry point and owns the threads, connections and the
single-instance lock; an opened store exposes one repository per concern:
``store.inventory`` (inventory.py, with inventory_writes.py and inventory_reads.py),
``store.keys`` (keys.py, keys_sql.py; private keys are sealed and opened in
key_material.py under the KEK of kek.py), ``store.audit`` (audit.py) and
``store.jobs`` (jobs.py).  records.py is the contract with users; codec.py turns
records into rows and back; connection.py holds the pragmas and error translation;
migrations.py applies the schema in ``migrations/``; keystore_checks.py runs at open.
"""

from sealfleet.adapters.store import migrations
from sealfleet.adapters.store.kek import KeyEncryptionKey, generate_kek_file
from sealfleet.adapters.store.store import Store

__all__ = ["KeyEncryptionKey", "Store", "generate_kek_file", "migrations"]
