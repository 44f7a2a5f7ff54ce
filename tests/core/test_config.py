"""SystemConfig and LauncherConfig: presets, defaults, and settings refused where they are set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core import LauncherConfig, SystemConfig


def test_a_preset_name_fills_in_what_is_not_given() -> None:
    aurora = SystemConfig(name="aurora")
    assert (aurora.ncpus, aurora.ngpus) == (102, 12)
    assert 0 not in aurora.cpus and 52 not in aurora.cpus
    assert aurora.gpus[:2] == ["0.0", "0.1"]
    assert SystemConfig(name="Polaris", ngpus=2).gpus == ["0", "1"]  # given wins


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"heartbeat_interval": 5, "heartbeat_timeout": 6}, "at least twice"),
        ({"gpu_selector": "NOT A NAME"}, "gpu_selector"),
        ({"child_executor_name": "dragon"}, "DragonHPC is not supported"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_launcher_settings_that_cannot_work_are_refused_where_set(
    fields: dict, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        LauncherConfig(**fields)
