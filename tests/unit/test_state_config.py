"""Cluster settings of the state service: health_source and state_service, and the slurm.conf
they render (SlurmdTimeout=0 when the state service is the only health source)."""

from __future__ import annotations

import pytest

from shoal.cluster.config import validate
from shoal.cluster.slurmconf import Addressing, render_slurm_conf
from shoal.cluster.statebackend import listener_conf
from shoal.errors import ConfigError


def test_health_source_state_turns_slurmd_timeout_off() -> None:
    conf = render_slurm_conf(validate({"health_source": "state"}), Addressing(3), "/x")
    assert "SlurmdTimeout=0" in conf.splitlines()
    conf = render_slurm_conf(validate({}), Addressing(3), "/x")
    assert "SlurmdTimeout=60" in conf.splitlines()


@pytest.mark.parametrize(
    "raw",
    [{"health_source": "ping"}, {"health_source": "state", "state_service": False}, {"state_service": "yes"}],
)
def test_bad_state_settings_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        validate(raw)


def test_listener_conf_points_at_the_controller() -> None:
    assert "url = http://10.250.3.2:6830" in listener_conf("10.250.3.2")
