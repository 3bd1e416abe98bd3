"""SQLite inventory store: clusters, keys, SealedSecrets, caches, audit log and jobs.

``Store`` (store.py) is the entry point and owns the threads and connections;
records.py is the contract with its users; writes.py, reads.py and jobs.py hold the
transaction bodies and queries; codec.py turns records into rows and back;
migrations.py applies the schema in ``migrations/``; kek.py encrypts private keys.
"""

from sealfleet.adapters.store import migrations
from sealfleet.adapters.store.kek import KeyEncryptionKey, generate_kek_file
from sealfleet.adapters.store.store import Store

__all__ = ["KeyEncryptionKey", "Store", "generate_kek_file", "migrations"]
