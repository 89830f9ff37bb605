"""What a user who may open a run sees of it.

A run's page and its JSON view tell its whole story - and the story carries business data: the
steps' payloads and results, their errors and tracebacks, the events' payloads, the state
documents, who did what. The admin's lists of jobs, events, state documents and audit entries
each need their own view permission, so the run's pages ask for the same ones:

- ``view_workflowrun``: the run - status, steps, times, attempt outcomes, progress, the
  diagram, what it waits for;
- ``view_job``: also the steps' payloads, results, errors and tracebacks (and a gate's payload,
  which ``decide_workflowrun`` shows too: a decision needs it); ``view_deadletter`` shows them
  for the dead-lettered steps, as the dead letters' list does;
- ``view_event``: the events' payloads;
- ``view_statedocument``: the state documents;
- ``view_auditentry``: the audit trail.

What is withheld is named on the page and under ``withheld`` in the JSON, with the permission
that shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: what an attempt's entry keeps without ``view_job``
ATTEMPT_FIELDS = ("attempt", "outcome", "started_at", "finished_at", "duration_ms", "worker")


@dataclass(frozen=True)
class Disclosure:
    jobs: bool
    dead_letters: bool
    events: bool
    states: bool
    audit: bool
    gate_payload: bool

    @classmethod
    def for_user(cls, user: Any) -> Disclosure:
        def may(codename: str) -> bool:
            return bool(user.has_perm(f"celery_workflows.{codename}"))

        jobs = may("view_job")
        return cls(
            jobs=jobs,
            dead_letters=jobs or may("view_deadletter"),
            events=may("view_event"),
            states=may("view_statedocument"),
            audit=may("view_auditentry"),
            gate_payload=jobs or may("decide_workflowrun"),
        )

    def job_data(self, status: str) -> bool:
        """Whether a step's payload, result and errors are shown: a step in ``status``."""
        return self.jobs or (self.dead_letters and status == "dead")

    @property
    def withheld(self) -> list[str]:
        """What this user does not see, each with the permission that shows it."""
        parts = [
            (self.jobs, "the steps' payloads, results, errors and tracebacks (view_job)"),
            (self.events, "the events' payloads (view_event)"),
            (self.states, "the state documents (view_statedocument)"),
            (self.audit, "the audit trail (view_auditentry)"),
        ]
        return [text for shown, text in parts if not shown]

    def redact(self, document: dict[str, Any]) -> dict[str, Any]:
        """The JSON view's ``document`` (``WorkflowStatus.to_json()``) without what this user
        may not see; it says what under ``withheld``."""
        for entry in document.get("history", []):
            if entry.get("kind") == "job" and not self.job_data(entry.get("status", "")):
                entry["payload"] = entry["result"] = None
                entry["error"] = ""
                entry["attempts"] = [
                    {key: a.get(key) for key in ATTEMPT_FIELDS} for a in entry.get("attempts", [])
                ]
            elif entry.get("kind") == "event" and not self.events:
                entry["payload"] = None
        if not self.states:
            document["states"] = {}
        if not self.audit:
            document["audit"] = []
        gate = document.get("waiting_for")
        if isinstance(gate, dict) and not self.gate_payload:
            gate["payload"] = None
        document["withheld"] = self.withheld
        return document
