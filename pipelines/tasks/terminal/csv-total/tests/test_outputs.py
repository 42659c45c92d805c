"""Tests for the csv-total task."""


def test_total():
    assert open("total.txt").read().strip() == "15.00"
