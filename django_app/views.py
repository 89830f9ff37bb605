"""A staff-only JSON view of a workflow's status, for dashboards and scripts (what it shows of
the run's data follows the user's permissions: :mod:`.disclosure`)."""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, JsonResponse

from celery_workflows import WorkflowNotFoundError, get_workflow

from .disclosure import Disclosure


@staff_member_required
def workflow_status(request: HttpRequest, id_or_business_key: str) -> JsonResponse:
    if not request.user.has_perm("celery_workflows.view_workflowrun"):
        raise PermissionDenied
    try:
        status = get_workflow(id_or_business_key)
    except WorkflowNotFoundError as exc:
        raise Http404(str(exc)) from exc
    return JsonResponse(Disclosure.for_user(request.user).redact(status.to_json()))
