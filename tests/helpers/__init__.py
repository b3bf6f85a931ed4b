"""Shared test code: the one place test modules import helpers from (``from helpers.x import y``;
``pyproject.toml`` puts ``tests/`` on pytest's path).  Test modules never import each other.

Modules whose name starts with ``site`` reach the local site (munged, the registries, the
gateway, Slurm, the test users, the installed prefix) and belong to the root and slurm tiers:
``tests/unit`` may not import them (tests/unit/test_suite_layout.py checks).  The others are
for every tier.
"""
