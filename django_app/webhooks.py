"""A webhook view that turns another system's verified callback into an event of the run it
belongs to (:func:`celery_workflows.deliver`)::

    from django_app.webhooks import event_webhook, signed_with

    urlpatterns = [
        path(
            "hooks/payments/",
            event_webhook(
                "paymentConfirmed",
                verify=signed_with(settings.PSP_SECRET, header="X-Signature"),
                business_key="order_id",
            ),
        ),
    ]

The request's JSON body is the event's payload; its field ``business_key`` (or
``correlation_id``) names the run. Answers: 202 with the event's id once it is recorded, 403
when ``verify`` refuses the request, 400 for a body that is not a JSON object, lacks the field
or fails the event's schema, 404 when no open run matches (senders retry on errors: nothing is
recorded until a request is accepted), 405 for anything but POST.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from celery_workflows import PayloadError, WorkflowNotFoundError, deliver
from celery_workflows.errors import ConfigurationError

#: decides whether a request really comes from the system it claims to (a signature check)
Verify = Callable[[HttpRequest], bool]


def signed_with(secret: str | bytes, *, header: str = "X-Signature") -> Verify:
    """A ``verify`` for the common scheme: ``header`` holds the hex HMAC-SHA256 of the raw
    body under ``secret`` (optionally prefixed ``sha256=``), compared in constant time."""
    key = secret.encode() if isinstance(secret, str) else secret
    if not key:
        raise ConfigurationError("signed_with(): the secret is empty")

    def verify(request: HttpRequest) -> bool:
        given = request.headers.get(header, "").removeprefix("sha256=")
        expected = hmac.new(key, request.body, hashlib.sha256).hexdigest()
        return bool(given) and hmac.compare_digest(given, expected)

    return verify


def event_webhook(
    event: str,
    *,
    verify: Verify,
    business_key: str | None = None,
    correlation_id: str | None = None,
    service: str | None = None,
) -> Callable[[HttpRequest], HttpResponse]:
    """A view that delivers ``event`` for each verified POST (see the module docstring).
    ``business_key`` or ``correlation_id`` (exactly one) is the body's field naming the run;
    ``service`` is the business key's service (default: the one the event's subscriptions
    belong to)."""
    if (business_key is None) == (correlation_id is None):
        raise ConfigurationError(
            f"event_webhook({event!r}): name the body's field with business_key= or "
            "correlation_id= (one of them)"
        )
    if not callable(verify):
        raise ConfigurationError(f"event_webhook({event!r}): verify must be a callable")
    field = business_key or correlation_id or ""

    @csrf_exempt
    @require_POST
    def view(request: HttpRequest) -> HttpResponse:
        if not verify(request):
            return JsonResponse({"error": "the request's signature does not verify"}, status=403)
        try:
            body = json.loads(request.body)
        except ValueError:
            return JsonResponse({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict) or body.get(field) in (None, ""):
            return JsonResponse({"error": f"the body is not an object with {field!r}"}, status=400)
        run = str(body[field])
        try:
            delivered = deliver(
                event,
                body,
                business_key=run if business_key else None,
                correlation_id=run if correlation_id else None,
                service=service,
                source="webhook",
            )
        except WorkflowNotFoundError as exc:
            return JsonResponse({"error": str(exc)}, status=404)
        except PayloadError as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        return JsonResponse(
            {"event_id": delivered.id, "correlation_id": delivered.correlation_id}, status=202
        )

    return view
