"""The Django app of celery-workflows: the job ledger's models, admin and commands.

Add ``"django_app"`` to ``INSTALLED_APPS``; its label is ``celery_workflows``.
"""
