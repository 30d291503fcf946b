"""The agent guide at /docs/ and /skill.md."""

urlpatterns: list = []
