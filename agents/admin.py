"""Admin for API keys and the cash ledger. ``Agent`` itself is registered in ``trading/admin.py`` (see there why).

Both are records only services write: operators look, and revoke keys through ``agents.services.api_key_revoke``.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from agents.models import ApiKey, LedgerEntry
from agents.services import api_key_revoke


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """An admin for rows that only services write: operators may look, never add, edit or delete.

    Editing by hand would bypass the services' locks and ledger (DESIGN section 5), so every write permission is off
    whatever the operator's Django permissions say; the change page renders as a view-only page.
    """

    # The tables behind these admins grow with every trade; counting all rows on each page load is not worth it.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyModelAdmin):
    list_display = ("prefix", "agent", "created_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter),)
    search_fields = ("prefix", "agent__name")
    list_select_related = ("agent",)  # ApiKey.__str__ and the agent column read the agent
    # The hash is never useful to an operator; the prefix is what the agent sees of its key.
    fields = ("agent", "prefix", "created_at", "revoked_at")
    ordering = ("-created_at",)
    actions = ["revoke_keys"]

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        # Revoking is the one write here; it needs the change permission the read-only admin otherwise ignores.
        return request.user.has_perm("agents.change_apikey")

    @admin.action(description="Revoke selected API keys", permissions=["revoke"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(agent=key.agent, key_id=key.id, allow_last=True)
            self.log_change(request, key, "Revoked.")
            revoked += 1
        skipped = queryset.count() - revoked
        message = f"Revoked {revoked} API key{'' if revoked == 1 else 's'}."
        if skipped:
            message += f" {skipped} {'was' if skipped == 1 else 'were'} already revoked."
        self.message_user(request, message, messages.SUCCESS)


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "created_at", "agent", "kind", "amount", "balance_after", "market_id", "reference", "memo")
    list_filter = ("kind",)
    search_fields = ("agent__name", "reference", "memo", "=market_id")
    list_select_related = ("agent",)
    date_hierarchy = "created_at"
