"""Include with ``path("workflows/", include("django_app.urls"))``."""

from django.urls import path

from . import views

app_name = "celery_workflows"
urlpatterns = [
    path("runs/<str:id_or_business_key>.json", views.workflow_status, name="status-json"),
]
