"""Run by `manage.py test` from tests/test_django.py, on test_NAME (the test pool)."""

from django.db import IntegrityError, connection, transaction
from django.test import TestCase, TransactionTestCase

from shop.models import Item, Order


class ShopTests(TestCase):
    def test_runs_on_the_test_database(self):
        with connection.cursor() as cursor:
            cursor.execute("SELECT DATABASE()")
            (name,) = cursor.fetchone()
        self.assertEqual(name, connection.settings_dict["NAME"])
        self.assertTrue(name.startswith("test_"), name)

    def test_orm_inside_the_test_transaction(self):
        item = Item.objects.create(name="pen", qty=3)
        Order.objects.create(item=item, note="first")
        with self.assertRaises(IntegrityError), transaction.atomic():
            Item.objects.create(name="pen")  # unique: a savepoint rolls back
        self.assertEqual(Item.objects.count(), 1)
        self.assertEqual(Order.objects.get().item.name, "pen")


class CommitTests(TransactionTestCase):
    def test_commits_and_flushes(self):
        with transaction.atomic():
            Item.objects.create(name="ink")
        self.assertEqual(Item.objects.filter(name="ink").count(), 1)
