from django.apps import AppConfig


class TestProjConfig(AppConfig):
    name = "tests.proj"
    label = "testproj"
