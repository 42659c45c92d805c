"""Tests for the edit-config task."""

import configparser


def test_config():
    cfg = configparser.ConfigParser()
    cfg.read("app.ini")
    assert cfg["server"]["port"] == "8080"
    assert cfg["server"]["debug"] == "false"
    assert cfg["server"]["host"] == "0.0.0.0"
    assert cfg["db"]["port"] == "5432" and cfg["db"]["debug"] == "true"
