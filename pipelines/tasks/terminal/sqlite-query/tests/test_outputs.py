"""Tests for the sqlite-query task."""

import sqlite3


def test_db_built():
    db = sqlite3.connect("shop.db")
    assert db.execute("SELECT COUNT(*) FROM orders").fetchone() == (4,)


def test_total():
    assert open("alice.txt").read().strip() == "42"
