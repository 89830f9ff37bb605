"""Deciders (who may decide an approval gate) are checked where they are declared: a wrong
permission, an empty list or a check that cannot be imported back fails in the handler that
asked, not at the decision."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from celery_workflows import ConfigurationError, Deciders
from celery_workflows.approvals import escalated, new_gate


def module_level_check(user: Any, gate: dict[str, Any]) -> bool:
    return True


def test_deciders_are_stored_as_json_and_read_back():
    deciders = Deciders(
        groups=["managers"], permissions=["orders.approve_order"], check=module_level_check
    )
    assert deciders.check == f"{__name__}.module_level_check"
    assert Deciders.from_json(deciders.to_json()) == deciders
    assert deciders.describe() == (
        "group managers or permission orders.approve_order or users "
        f"{__name__}.module_level_check allows"
    )


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({}, "name at least one group, permission or check"),
        ({"permissions": ["approve_order"]}, "a permission is 'app_label.codename'"),
        ({"groups": [""]}, "groups are names"),
        ({"check": lambda user, gate: True}, "check must be a module-level function"),
        ({"check": "no.such.module.check"}, "cannot import the check"),
    ],
)
def test_deciders_that_cannot_work_are_refused_when_declared(kwargs, problem):
    with pytest.raises(ConfigurationError, match=problem):
        Deciders(**kwargs)


def test_escalation_needs_an_expiry_and_hands_the_gate_on_for_as_long_again():
    with pytest.raises(ConfigurationError, match="escalate_to needs expires_in"):
        new_gate("c", "j", "ok?", "yes", "no", None, escalate_to=Deciders(groups=["boss"]))
    gate = {
        "opened_at": "2026-01-01T10:00:00+00:00",
        "expires_at": "2026-01-01T11:00:00+00:00",
        "deciders": {"groups": ["managers"]},
        "escalate_to": {"groups": ["directors"]},
    }
    later = escalated(gate, datetime.fromisoformat("2026-01-01T11:00:05+00:00"))
    assert later is not None
    assert later["deciders"] == {"groups": ["directors"]} and later["escalate_to"] is None
    assert later["expires_at"] == "2026-01-01T12:00:05+00:00"
    assert escalated(later, datetime.fromisoformat("2026-01-01T12:00:06+00:00")) is None
