"""Error pages: JSON in the one error shape under /api/, Django's defaults elsewhere."""

from django.http import JsonResponse
from django.views import defaults

from moltstreet.errors import error_body


def not_found(request, exception=None):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "No such endpoint.", {"path": request.path}), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    if request.path.startswith("/api/"):
        return JsonResponse(
            error_body("internal_error", "Something went wrong on our side; it has been logged."), status=500
        )
    return defaults.server_error(request)
