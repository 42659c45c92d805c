"""Tests for the env-to-json task."""

import json


def test_settings():
    assert json.load(open("settings.json")) == {
        "HOST": "db.local",
        "PORT": 5432,
        "USER": "app",
        "RETRIES": 3,
    }
