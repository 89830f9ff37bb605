"""The test project's own business data: what its atomic steps write with the ORM."""

from __future__ import annotations

from django.db import models


class Shipment(models.Model):
    """One row per shipment an attempt of ``atom.ship`` (or ``atom.shipLoose``) made."""

    order_id = models.CharField(max_length=64, db_index=True)
    attempt = models.PositiveIntegerField()
    queue = models.CharField(max_length=100)

    def __str__(self) -> str:
        return f"shipment of {self.order_id} by attempt {self.attempt}"
