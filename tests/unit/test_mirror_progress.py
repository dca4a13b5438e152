"""A resync's progress counts what the target acknowledged, not what was queued."""

from __future__ import annotations

from vigil.kits.mirror.sessions import Progress


def test_a_region_is_done_once_the_target_acknowledges_it() -> None:
    progress = Progress("partial", total=3)
    for seq in (10, 11, 12):
        progress.sent(seq, 1 << 20)
    assert (progress.done, progress.bytes, progress.view()["percent"]) == (0, 0, 0.0)
    progress.acknowledged(9)  # a live write before the resync's first region
    assert progress.done == 0
    progress.acknowledged(11)  # acknowledgements are cumulative
    assert (progress.done, progress.bytes) == (2, 2 << 20)
    assert progress.view()["percent"] == 66.7
    progress.acknowledged(40)
    assert (progress.done, progress.bytes, progress.view()["percent"]) == (3, 3 << 20, 100.0)
    progress.acknowledged(41)  # nothing more to count
    assert progress.done == 3


def test_the_eta_is_unknown_until_something_is_acknowledged() -> None:
    progress = Progress("full", total=4)
    progress.sent(1, 4096)
    assert progress.view()["eta_s"] == -1.0
    progress.acknowledged(1)
    assert progress.view()["eta_s"] >= 0
