"""``/hit``: write a row in atomic(), read it back, say whether it was ours."""

import os
import secrets

from django.db import transaction
from django.http import JsonResponse

from hits.models import Hit


def hit(request: object) -> JsonResponse:
    """Insert a row in a transaction and read it back by its id."""
    token = secrets.token_hex(16)
    with transaction.atomic():  # pins one MySQL connection for this block only
        row = Hit.objects.create(token=token, pid=os.getpid())
        got = Hit.objects.get(pk=row.pk).token
    return JsonResponse(
        {"pid": os.getpid(), "id": row.pk, "token": token, "own_row": got == token}
    )
