"""SQLite inventory store: clusters, keys, SealedSecrets, caches, audit log and jobs.

``Store`` (store.py) is the entry point; records.py is the contract with its users;
migrations.py applies the schema in ``migrations/``; kek.py encrypts private keys.
"""

from sealfleet.adapters.store import migrations
from sealfleet.adapters.store.kek import KeyEncryptionKey, generate_kek_file
from sealfleet.adapters.store.store import Store

__all__ = ["KeyEncryptionKey", "Store", "generate_kek_file", "migrations"]
