"""Two models with a foreign key: enough for migrations, locking and bulk inserts."""

from django.db import models


class Item(models.Model):
    """A stock item."""

    name = models.CharField(max_length=50, unique=True)
    qty = models.IntegerField(default=0)
    opens = models.TimeField(null=True)
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)


class Order(models.Model):
    """An order of one item."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE)
    placed = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=100, default="")
