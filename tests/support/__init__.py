"""Test support: real services (Tansu, Redis) and the fixtures built on them.

See :mod:`tests.support.services`; ``tests/conftest.py`` registers its fixtures.
"""
