"""Workflows on your models: the runs of a model instance, and the instance of a run.

A project's business data already lives in its models - an ``Order`` row per order - and its
workflow runs carry a business key (``WorkflowService(..., business_key="orderId")``). One
declaration joins the two::

    link_runs(Order, service="order", key="number")

says that the runs of the service ``order`` whose business key is an order's ``number`` are
that order's runs. Nothing is written to the run or to the model: the business key is the
link, so runs started before the declaration (or by another process) are linked too, and the
model needs no migration. From there:

- :func:`runs_for` - an instance's runs, newest first (a queryset of
  :class:`~django_app.models.WorkflowRun`);
- :func:`subject_of` - the instance a run belongs to (the run page links to it);
- :class:`WorkflowRunsMixin` - for the model's ``ModelAdmin``: its change page lists the
  instance's runs with their steps;
- ``{% load workflows %}{% workflow_runs order %}`` - the same list on the project's own pages.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse

from celery_workflows.errors import ConfigurationError

from .models import Job, WorkflowRun

#: how many runs an instance's list shows (the newest)
RUNS_SHOWN = 20


@dataclass(frozen=True)
class Link:
    """Runs of ``service`` whose business key is the value of ``key`` on a ``model`` instance."""

    model: type[models.Model]
    service: str
    key: str

    def key_of(self, obj: models.Model) -> str:
        return str(getattr(obj, self.key))


_links: dict[str, Link] = {}


def link_runs(model: type[models.Model], *, service: Any, key: str = "pk") -> Link:
    """Declare that the runs of ``service`` (its name, or the ``WorkflowService``) whose
    business key equals ``key`` (a field of ``model``, or ``"pk"``) belong to that instance.

    One model per service, so that a run knows its instance; a model may have runs of several
    services. Raises :class:`~celery_workflows.errors.ConfigurationError` on a wrong model,
    field or service, or a second model for the same service."""
    if not (isinstance(model, type) and issubclass(model, models.Model)):
        raise ConfigurationError(f"link_runs: {model!r} is not a Django model class")
    name = service if isinstance(service, str) else getattr(service, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"link_runs({model.__name__}): service must be a service's name or a "
            f"WorkflowService, got {service!r}"
        )
    if key != "pk":
        try:
            model._meta.get_field(key)
        except FieldDoesNotExist:
            raise ConfigurationError(
                f"link_runs({model.__name__}): {model.__name__} has no field {key!r} "
                "to hold the runs' business key"
            ) from None
    link = Link(model, name, key)
    existing = _links.get(name)
    if existing is not None and existing != link:
        raise ConfigurationError(
            f"link_runs({model.__name__}): the runs of service {name!r} already belong to "
            f"{existing.model.__name__}.{existing.key}"
        )
    _links[name] = link
    return link


def links_of(model: type[models.Model]) -> list[Link]:
    """The links declared for ``model`` (or a model it inherits from)."""
    return [link for link in _links.values() if issubclass(model, link.model)]


def runs_for(obj: models.Model, service: Any = None) -> QuerySet[WorkflowRun]:
    """``obj``'s runs (of every service linked to its model, or of ``service``), newest
    first."""
    links = links_of(type(obj))
    if service is not None:
        name = service if isinstance(service, str) else getattr(service, "name", service)
        links = [link for link in links if link.service == name]
    if not links:
        raise ConfigurationError(
            f"runs_for: no runs are linked to {type(obj).__name__}"
            + (f" for service {service!r}" if service is not None else "")
            + "; declare them with link_runs()"
        )
    runs = WorkflowRun.objects.none()
    for link in links:
        runs = runs | WorkflowRun.objects.filter(name=link.service, business_key=link.key_of(obj))
    return runs.order_by("-started_at")


def subject_of(run: WorkflowRun) -> models.Model | None:
    """The instance ``run`` belongs to, or None (no link for its service, no such instance)."""
    link = _links.get(run.name)
    if link is None or not run.business_key:
        return None
    try:
        return link.model._default_manager.filter(**{link.key: run.business_key}).first()
    except (ValueError, TypeError, ValidationError):  # a key that cannot be the field's value
        return None


def admin_url(obj: models.Model) -> str | None:
    """The admin change page of ``obj``, if its model is registered there."""
    meta = obj._meta
    try:
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
    except NoReverseMatch:
        return None


def runs_context(obj: models.Model, request: HttpRequest | None) -> dict[str, Any]:
    """What the runs list shows of ``obj``: its runs (if the user may see runs) with their
    steps - names, statuses and attempts, none of their data."""
    user = getattr(request, "user", None)
    allowed = user is not None and user.has_perm("celery_workflows.view_workflowrun")
    if not allowed:
        return {"allowed": False, "runs": []}
    runs = list(runs_for(obj)[:RUNS_SHOWN])
    steps: dict[str, list[dict[str, Any]]] = {run.correlation_id: [] for run in runs}
    for job in (
        Job.objects.filter(correlation_id__in=list(steps))
        .order_by("created_at")
        .values("correlation_id", "queue", "status", "attempts", "finished_at", "compensates")
    ):
        steps[job["correlation_id"]].append(dict(job))
    return {
        "allowed": True,
        "runs": [
            {
                "run": run,
                "url": reverse(
                    "admin:celery_workflows_workflowrun_change", args=[run.correlation_id]
                ),
                "steps": steps[run.correlation_id],
            }
            for run in runs
        ],
        "more": len(runs) == RUNS_SHOWN,
    }


_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "celery_workflows_subject_request", default=None
)


class WorkflowRunsMixin:
    """Mix into the ``ModelAdmin`` of a model declared with :func:`link_runs`: its change page
    gets a "Workflow runs" section - each run's status, start, steps and a link to its page,
    shown to users who may view runs.

    ``class OrderAdmin(WorkflowRunsMixin, admin.ModelAdmin): ...``
    """

    workflow_runs_title = "Workflow runs"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        _request.set(request)
        fields = tuple(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        return fields if obj is None or "workflow_runs" in fields else (*fields, "workflow_runs")

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))  # type: ignore[misc]
        if obj is None:
            return fieldsets
        named = [f for _, options in fieldsets for f in options.get("fields", ())]
        if "workflow_runs" in named:
            if getattr(self, "fieldsets", None) is None:  # Django's own single fieldset
                fields = [f for f in fieldsets[0][1]["fields"] if f != "workflow_runs"]
                fieldsets[0] = (fieldsets[0][0], {**fieldsets[0][1], "fields": fields})
            else:
                return fieldsets
        return [*fieldsets, (self.workflow_runs_title, {"fields": ["workflow_runs"]})]

    def workflow_runs(self, obj: models.Model) -> str:
        return render_to_string(
            "celery_workflows/subject_runs.html", runs_context(obj, _request.get())
        )

    workflow_runs.short_description = "Runs"  # type: ignore[attr-defined]
