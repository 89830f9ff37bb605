from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_app.subjects import link_runs

        from .models import Order

        # the runs of the order service whose business key is an order's number are its runs
        link_runs(Order, service="order", key="number")
