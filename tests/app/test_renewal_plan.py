"""A renewal's new key is strictly newer than the newest master key, even within the
same second (the controller keeps the first of equal NotBefores: a tie would make a key
no controller seals with)."""

from __future__ import annotations

from pathlib import Path

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.jobs import key_jobs
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.keystore import Keystore
from sealfleet.domain.keys import KeySource, generate_sealing_key


async def test_a_renewal_right_after_a_renewal_makes_a_strictly_newer_key(
        tmp_path: Path) -> None:
    settings = config.settings_from_mapping({"fleet": {"master": True, "key_bits": 2048}},
                                            base_dir=tmp_path)
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as store:
        keystore = Keystore(store)
        current = generate_sealing_key(bits=2048)       # NotBefore: this very second
        await keystore.adopt([current], source=KeySource.GENERATED)
        await keystore.add_master(current.fingerprint)
        renewal = key_jobs.Renewal(JobContext(store, keystore, lambda: settings))
        plan = await renewal.plan({})
        (new,) = plan.new_keys
        assert new.not_before > current.not_before
        assert plan.params["new_key"] == new.fingerprint
