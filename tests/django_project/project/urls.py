"""No pages: the test project is driven through the ORM and manage.py."""

urlpatterns: list = []
