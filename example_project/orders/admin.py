from django.contrib import admin

from django_app.subjects import WorkflowRunsMixin

from .models import Order


@admin.register(Order)
class OrderAdmin(WorkflowRunsMixin, admin.ModelAdmin):
    """An order's page lists its workflow runs, their steps and a link to each."""

    list_display = ("number", "customer", "total", "status", "tracking", "updated_at")
    list_filter = ("status",)
    search_fields = ("number", "customer")
    readonly_fields = ("number", "customer", "total", "status", "tracking", "updated_at")
