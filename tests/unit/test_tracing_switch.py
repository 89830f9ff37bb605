"""Attempt spans are made only once a tracer provider is set: with the OpenTelemetry API
installed but not configured, every span would be a no-op that still costs its making."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    from datetime import datetime, timezone

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from celery_workflows import telemetry
    from celery_workflows.records import ClaimedJob

    now = datetime.now(timezone.utc)
    job = ClaimedJob(
        id="a" * 32, queue="shop.step", payload={}, attempt=1, max_attempts=3,
        correlation_id="b" * 32, lease_token="t", lease_expires_at=now, started_at=now,
        attempt_log=[], created_at=now, priority=None, trace_id="", compensates=None,
        business_key="",
    )
    with telemetry.attempt_span(job) as span, telemetry.producer_span("emit x") as parent:
        assert span is None and parent is None, (span, parent)
    trace.set_tracer_provider(TracerProvider())
    with telemetry.attempt_span(job) as span, telemetry.producer_span("emit x") as parent:
        assert span is not None and span.is_recording()
        assert parent and parent.startswith("00-"), parent
    print("ok")
    """
)


def test_spans_are_made_only_once_a_tracer_provider_is_set():
    # a fresh interpreter: the tracer provider can be set once per process
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
