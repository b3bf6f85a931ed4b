"""The suite itself: pytest imports test modules by basename (rootdir-relative, no
packages), so two test files with one name in different tier folders stop the whole run
at collection."""

import collections
import os

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_test_file_has_a_basename_of_its_own():
    seen = collections.defaultdict(list)
    for root, _, files in os.walk(TESTS):
        for name in files:
            if name.startswith("test_") and name.endswith(".py"):
                seen[name].append(os.path.relpath(os.path.join(root, name), TESTS))
    assert {n: p for n, p in seen.items() if len(p) > 1} == {}
