"""keep_freed_memory: a scoring process reuses freed blocks instead of faulting in fresh pages every batch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from AnomalyScoutLib.allocator import keep_freed_memory

# Allocates, fills and frees a 40 MiB tensor ten times after ten such warm-up rounds, and prints the page
# faults that cost. 40 MiB is more than glibc's largest automatic mmap threshold, so by default every block
# is a fresh mapping of 4 KiB pages (numpy would ask for huge pages, torch does not).
_PROBE = """
import resource, sys
import torch
from AnomalyScoutLib.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(10):  # the first batches grow the heap either way
    torch.ones(10 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(10 << 20).sum()  # made, filled and freed before the next one
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, timeout=120
    )
    applied, faults = result.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_blocks_are_reused_without_new_page_faults():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied == "True"
    assert default > 10 * 2560 * 0.8, "the default allocator maps 10 fresh 40 MiB blocks"
    assert kept < default / 10, f"{kept} page faults with keep_freed_memory, {default} without"


def test_a_second_call_changes_nothing_and_still_reports_the_setting():
    first = keep_freed_memory()
    assert keep_freed_memory() == first
