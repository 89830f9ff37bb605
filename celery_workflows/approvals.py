"""Human approval gates: a workflow waits until a person approves or rejects.

A step calls ``ctx.wait_for_human(...)`` and finishes normally; with its successful outcome -
in the same fenced write - the run's status becomes ``waiting`` and remembers which event an
approval emits and which a rejection emits (a step that fails after asking, or an attempt
whose lease was taken over, opens no gate). Nothing runs until someone decides - in the
admin (Approve / Reject buttons) or in code with :func:`decide` (a link in an email, a Slack
action). The decision emits the chosen event in the
run's workflow, so subscriptions continue it like any other step. A gate is decided once: a
second click finds it closed.

A gate may name who decides it (:class:`Deciders`: groups, permissions, or a check on the
user): only they see its buttons in the admin and may call :func:`decide` with their ``user``;
the audit trail records the user. With ``escalate_to``, a gate nobody decided in time passes
to other deciders for as long again before it expires.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import registry, telemetry
from .clock import utcnow
from .errors import ConfigurationError, DecisionNotAllowedError, GateClosedError
from .events import new_event, write_and_publish
from .payloads import to_json
from .records import Event
from .store import get_store

#: what a check on the user is called with: the user, and the gate (as stored)
UserCheck = Callable[[Any, dict[str, Any]], bool]


@dataclass(frozen=True, init=False)
class Deciders:
    """Who may decide a gate: members of any of ``groups``, holders of any of
    ``permissions`` (``"app_label.codename"``), and users for whom ``check(user, gate)`` is
    true - any one suffices. Active superusers always may, as everywhere in Django's admin.

    ``check`` is a module-level function (it is stored by its dotted path with the gate, and
    imported where the decision is made)."""

    groups: tuple[str, ...]
    permissions: tuple[str, ...]
    check: str | None

    def __init__(
        self,
        groups: Iterable[str] = (),
        permissions: Iterable[str] = (),
        check: UserCheck | str | None = None,
    ) -> None:
        named = tuple([groups] if isinstance(groups, str) else groups)
        perms = tuple([permissions] if isinstance(permissions, str) else permissions)
        for perm in perms:
            if not isinstance(perm, str) or perm.count(".") != 1:
                raise ConfigurationError(
                    f"Deciders: a permission is 'app_label.codename', got {perm!r}"
                )
        if not all(isinstance(g, str) and g for g in named):
            raise ConfigurationError(f"Deciders: groups are names, got {named!r}")
        path = check if isinstance(check, str) or check is None else _path_of(check)
        if path is not None:
            _import(path)  # fails now, in the handler that asked, rather than at the decision
        if not (named or perms or path):
            raise ConfigurationError("Deciders: name at least one group, permission or check")
        object.__setattr__(self, "groups", named)
        object.__setattr__(self, "permissions", perms)
        object.__setattr__(self, "check", path)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": list(self.groups),
            "permissions": list(self.permissions),
            "check": self.check,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deciders:
        return cls(data.get("groups") or (), data.get("permissions") or (), data.get("check"))

    def describe(self) -> str:
        parts = [*(f"group {g}" for g in self.groups)]
        parts += [f"permission {p}" for p in self.permissions]
        parts += [f"users {self.check} allows"] if self.check else []
        return " or ".join(parts)

    def allow(self, user: Any, gate: dict[str, Any]) -> bool:
        """Whether ``user`` (a Django user) may decide ``gate``."""
        if user is None or not getattr(user, "is_active", False):
            return False
        if getattr(user, "is_superuser", False):
            return True
        if self.groups and user.groups.filter(name__in=self.groups).exists():
            return True
        if any(user.has_perm(perm) for perm in self.permissions):
            return True
        return bool(self.check and _import(self.check)(user, gate))


def _path_of(check: Any) -> str:
    path = f"{getattr(check, '__module__', '')}.{getattr(check, '__qualname__', '')}"
    try:
        found = _import(path)
    except ConfigurationError:
        found = None
    if found is not check:
        raise ConfigurationError(
            f"Deciders: check must be a module-level function (it is stored by its dotted "
            f"path), got {check!r}"
        )
    return path


def _import(path: str) -> UserCheck:
    module, _, name = path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigurationError(f"Deciders: cannot import the check {path!r}") from None
    if not callable(found):
        raise ConfigurationError(f"Deciders: the check {path!r} is not callable")
    return found  # type: ignore[no-any-return]


def may_decide(gate: dict[str, Any], user: Any) -> bool:
    """Whether ``user`` may decide ``gate`` by the gate's own deciders (a gate that names
    none leaves it to the ``decide_workflowrun`` permission)."""
    deciders = gate.get("deciders")
    return True if not deciders else Deciders.from_json(deciders).allow(user, gate)


def escalated(gate: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """An expired ``gate`` passed to its ``escalate_to`` deciders for as long again as it was
    open, or None when it names none (it then expires)."""
    if not gate.get("escalate_to") or not gate.get("expires_at"):
        return None
    began = datetime.fromisoformat(gate.get("escalated_at") or gate["opened_at"])
    span = datetime.fromisoformat(gate["expires_at"]) - began
    return {
        **gate,
        "deciders": gate["escalate_to"],
        "escalate_to": None,
        "escalated_at": now.isoformat(),
        "expires_at": (now + span).isoformat(),
    }


@dataclass(frozen=True)
class Gate:
    prompt: str
    approve_event: str
    reject_event: str
    payload: Any
    opened_by_job: str
    opened_at: str
    #: ISO time after which the gate closes unanswered, emitting ``timeout_event``
    expires_at: str | None = None
    timeout_event: str | None = None
    #: the W3C traceparent of the attempt that opened the gate: the decision continues it
    traceparent: str | None = None
    #: the priority of the step that opened it: the decision's jobs inherit it
    priority: int | None = None
    #: a gate that waits for an event from outside (not a decision): its name
    awaits: str | None = None
    #: for such a gate: an event of that name in the run since then (the step's job was
    #: created) counts, even one that came before the gate opened
    since: str | None = None
    #: who may decide it (:class:`Deciders` as JSON); None: whoever may decide runs
    deciders: dict[str, Any] | None = None
    #: who decides once it expired undecided (then it expires for good); its moment
    escalate_to: dict[str, Any] | None = None
    escalated_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gate:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


def new_gate(
    correlation_id: str,
    job_id: str,
    prompt: str,
    approve_event: str,
    reject_event: str,
    payload: Any,
    expires_in: timedelta | None = None,
    timeout_event: str | None = None,
    priority: int | None = None,
    deciders: Deciders | None = None,
    escalate_to: Deciders | None = None,
) -> Gate:
    """The gate a step opens (validated now: a bad event name or expiry raises in the
    handler). It is written with the step's successful outcome, behind its fence: a step that
    fails, or a zombie attempt, opens nothing."""
    for who, value in (("deciders", deciders), ("escalate_to", escalate_to)):
        if value is not None and not isinstance(value, Deciders):
            raise ConfigurationError(
                f"approval gate {prompt!r}: {who} must be a Deciders, got {value!r}"
            )
    if escalate_to is not None and expires_in is None:
        raise ConfigurationError(
            f"approval gate {prompt!r}: escalate_to needs expires_in (when to escalate)"
        )
    for name in (approve_event, reject_event, *([timeout_event] if timeout_event else [])):
        registry.check_name("event", name)
    if expires_in is not None and (
        not isinstance(expires_in, timedelta) or expires_in.total_seconds() <= 0
    ):
        raise ConfigurationError(
            f"approval gate {prompt!r}: expires_in must be a positive timedelta, got {expires_in!r}"
        )
    now = utcnow()
    return Gate(
        prompt=prompt,
        approve_event=approve_event,
        reject_event=reject_event,
        payload=to_json(f"approval gate {prompt!r}", payload),
        opened_by_job=job_id,
        opened_at=now.isoformat(),
        expires_at=(now + expires_in).isoformat() if expires_in else None,
        timeout_event=(timeout_event or reject_event) if expires_in else None,
        traceparent=telemetry.current_traceparent(),
        priority=priority,
        deciders=deciders.to_json() if deciders else None,
        escalate_to=escalate_to.to_json() if escalate_to else None,
    )


def new_event_gate(
    correlation_id: str,
    job_id: str,
    since: datetime,
    event: str,
    timeout: timedelta | None,
    timeout_event: str | None,
    payload: Any,
    priority: int | None = None,
) -> Gate:
    """The gate a step opens to wait for ``event`` from outside (see
    :meth:`JobContext.wait_for_event`), validated now; written with the step's success."""
    registry.check_name("event", event)
    if timeout_event is not None:
        registry.check_name("event", timeout_event)
    if (timeout is None) != (timeout_event is None):
        raise ConfigurationError(
            f"waiting for {event!r}: timeout and timeout_event go together (a wait that can "
            "time out must say what its timeout emits)"
        )
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise ConfigurationError(
            f"waiting for {event!r}: timeout must be a positive timedelta, got {timeout!r}"
        )
    now = utcnow()
    return Gate(
        prompt=f"waiting for {event}",
        approve_event="",
        reject_event="",
        payload=to_json(f"waiting for {event!r}", payload),
        opened_by_job=job_id,
        opened_at=now.isoformat(),
        expires_at=(now + timeout).isoformat() if timeout else None,
        timeout_event=timeout_event,
        traceparent=telemetry.current_traceparent(),
        priority=priority,
        awaits=event,
        since=since.isoformat(),
    )


def queued_behind(current: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The run's open gate with ``gate`` waiting behind it: a second step of the run (another
    branch) asked while the run already waits. Gates open one after the other, in the order
    asked; each is decided, expires or is answered by its own event or child."""
    return {**current, "queued": [*current.get("queued", []), gate]}


def next_gate(closed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A gate being closed, without the gates queued behind it, and the one that opens now."""
    queued = list(closed.get("queued", []))
    gate = {k: v for k, v in closed.items() if k != "queued"}
    if not queued:
        return gate, None
    following = dict(queued[0])
    if queued[1:]:
        following["queued"] = queued[1:]
    return gate, following


#: how a gate names the child run it waits for (event names cannot hold ":")
CHILD_PREFIX = "child:"


def awaits_event(gate: dict[str, Any]) -> bool:
    """A gate that an event from outside answers (not a decision, not a child run)."""
    awaits = gate.get("awaits") or ""
    return bool(awaits) and not awaits.startswith(CHILD_PREFIX)


def decide(
    correlation_id: str,
    approve: bool,
    actor: str = "",
    comment: str = "",
    *,
    user: Any = None,
) -> Event:
    """Approve or reject the run's open gate; emits the gate's event in the run's workflow.

    The decision is audited with ``actor`` (default: ``user``'s username) and ``comment`` in
    the same transaction, with the user's id when ``user`` is given. A gate that names its
    :class:`Deciders` needs the deciding ``user``, and one of them:
    :class:`~celery_workflows.errors.DecisionNotAllowedError` otherwise (the gate stays open).
    Raises :class:`GateClosedError` if the run is not waiting (so a double click does nothing).
    """
    if user is not None and not actor:
        actor = str(user.get_username())
    if not actor:
        raise ConfigurationError("decide: say who decides (actor=, or user=)")
    action = "approve" if approve else "reject"
    event = _close(correlation_id, action, actor, comment, user=user)
    if event is None:
        raise GateClosedError(f"workflow {correlation_id} is not waiting for a decision")
    return event


def expire_gate(correlation_id: str) -> Event | None:
    """Close a gate whose expiry passed, emitting its timeout event - once, audited as
    ``expire`` by ``system`` - or pass it to its ``escalate_to`` deciders (audited as
    ``escalate``). None if the run was decided meanwhile, is not expired, or escalated."""
    if get_store().escalate_gate(correlation_id, utcnow()) is not None:
        return None
    return _close(correlation_id, "expire", "system", "no decision before the gate expired")


def _close(
    correlation_id: str, action: str, actor: str, comment: str, user: Any = None
) -> Event | None:
    store = get_store()
    with store.atomic():
        user_id = "" if user is None else str(user.pk)
        data = store.close_gate(
            correlation_id, actor, action, comment, expired=action == "expire", user_id=user_id
        )
        if data is None:
            return None
        if action != "expire" and data.get("deciders"):
            # raised inside the transaction: the gate stays open, nothing is audited
            deciders = Deciders.from_json(data["deciders"])
            if user is None:
                raise DecisionNotAllowedError(
                    f"workflow {correlation_id}: its gate is decided by {deciders.describe()}; "
                    "pass the deciding user (decide(..., user=...))"
                )
            if not deciders.allow(user, data):
                raise DecisionNotAllowedError(
                    f"workflow {correlation_id}: {user.get_username()} may not decide it; it is "
                    f"decided by "
                    f"{deciders.describe()}"
                )
        gate = Gate.from_json(data)
        name = {
            "approve": gate.approve_event,
            "reject": gate.reject_event,
            "expire": gate.timeout_event or gate.reject_event,
        }[action]
        payload = gate.payload if isinstance(gate.payload, dict) else {"value": gate.payload}
        traceparent = telemetry.new_traceparent(f"{action} {name}", gate.traceparent, event=name)
        event = new_event(
            name,
            {**payload, "decidedBy": actor, "comment": comment},
            source="approval",
            correlation_id=correlation_id,
            causation_id=gate.opened_by_job,
            trace_id=traceparent or None,
        )
        write_and_publish(store, [event], priority=gate.priority)
    return event
