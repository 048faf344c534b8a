"""Test support: realistic STAC catalogues built from the real pixels and item JSON shipped with the tests."""
