"""Small helpers shared by the tests."""

from __future__ import annotations

from django.contrib.auth.models import Permission, User
from django.test import Client


def staff(username: str, *perms: str) -> Client:
    """A logged-in client of a staff user holding exactly ``perms`` (codenames)."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client
