from django.contrib import admin

from django_app.subjects import WorkflowRunsMixin
from tests.proj.models import Shipment


@admin.register(Shipment)
class ShipmentAdmin(WorkflowRunsMixin, admin.ModelAdmin):
    list_display = ("order_id", "attempt", "queue")
