"""Tests for the sqlite-update task."""

import sqlite3


def test_inventory():
    db = sqlite3.connect("inventory.db")
    rows = db.execute("SELECT name, quantity FROM items ORDER BY name").fetchall()
    assert rows == [("bread", 0), ("milk", 4), ("rice", 10), ("yoghurt", 0)]
