"""Integrations with other frameworks' APIs (imported only when you configure them)."""
