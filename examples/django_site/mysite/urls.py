"""One page: /hit."""

from django.urls import path
from hits.views import hit

urlpatterns = [path("hit", hit)]
