"""The shop's own record of an order - what its pages and its staff look at.

The order workflow keeps it up to date from atomic steps (``atomic=True`` in
``orders/workflows.py``): each change is committed with the step that made it, exactly once.
Its runs are linked to it by the business key (``orders/apps.py``), so the admin's order page
lists them.
"""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    class Status(models.TextChoices):
        RESERVED = "reserved", "stock reserved"
        BACKORDERED = "backordered", "waiting for stock"
        SHIPPED = "shipped", "shipped"
        CANCELLED = "cancelled", "cancelled"

    number = models.CharField(max_length=32, unique=True, help_text="the runs' business key")
    customer = models.CharField(max_length=64)
    total = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=16, choices=Status.choices)
    tracking = models.CharField(max_length=64, blank=True, default="")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.number
