from django.apps import AppConfig


class TestProjConfig(AppConfig):
    name = "tests.proj"
    label = "testproj"
    default_auto_field = "django.db.models.BigAutoField"
