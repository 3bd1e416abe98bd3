"""The worker's pacing comes from ``[fleet]`` only: the config is the one source of defaults."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions


def test_worker_options_are_read_from_the_fleet_settings() -> None:
    settings = config.settings_from_mapping({"fleet": {
        "backoff_initial": "2s", "backoff_max": "1m", "resync_interval": "15m",
        "request_timeout": "10s"}}, base_dir=Path("."))
    options = WorkerOptions.from_settings(settings.fleet)
    assert (options.backoff.initial, options.backoff.cap) == (2.0, 60.0)
    assert (options.resync_interval, options.request_timeout) == (900.0, 10.0)


def test_default_worker_options_are_the_config_defaults() -> None:
    fleet = config.settings_from_mapping({}, base_dir=Path(".")).fleet
    options = WorkerOptions.from_settings(fleet)
    assert options.backoff.initial == fleet.backoff_initial.total_seconds()
    assert options.backoff.cap == fleet.backoff_max.total_seconds()
    assert dt.timedelta(seconds=options.resync_interval) == fleet.resync_interval
