from django.apps import AppConfig


class TestProjConfig(AppConfig):
    name = "tests.proj"
    label = "testproj"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_app.subjects import link_runs
        from tests.proj.models import Shipment

        # tests/integration/test_subjects.py: a shipment's runs are the "reusing" service's
        # runs whose business key is its order id
        link_runs(Shipment, service="reusing", key="order_id")
