from django.contrib import admin
from django.urls import include, path

from django_app.webhooks import event_webhook, signed_with

#: the payment provider's signing secret in the webhook tests
PSP_SECRET = "psp-test-secret"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("workflows/", include("django_app.urls")),
    path(
        "hooks/psp/",
        event_webhook("pspConfirmed", verify=signed_with(PSP_SECRET), business_key="order"),
    ),
]
