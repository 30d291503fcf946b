"""Error pages: JSON in the one error shape under /api/, Django's defaults elsewhere."""

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse
from django.views import defaults

from moltstreet.errors import error_body


def bad_request(request, exception=None):
    # Django's own 400s (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, a bad Host header) never reach DRF's handler.
    if request.path.startswith("/api/") and isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return JsonResponse(
            error_body("request_too_large", f"The request body is over {limit} bytes.", {"max_bytes": limit}),
            status=413,
        )
    if request.path.startswith("/api/"):
        return JsonResponse(
            error_body("bad_request", "The request could not be read: it is malformed or too large."), status=400
        )
    return defaults.bad_request(request, exception)


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
