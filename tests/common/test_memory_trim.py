"""The gateway gives freed heap back to the OS once its connections have fallen to half their peak."""

from __future__ import annotations

from chat_common import process
from chat_common.process import MemoryTrimmer
from tests.support.wait import eventually


async def test_trims_once_after_the_count_halves(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    monkeypatch.setattr(process, "_malloc_trim", lambda pad: calls.append(pad) or 1)
    trimmer = MemoryTrimmer(delay_s=0.01)
    for count in range(1, 201):
        trimmer.note(count)
    for count in range(199, 100, -1):  # down to just above half the peak: nothing yet
        trimmer.note(count)
    assert trimmer._pending is None
    for count in range(100, 9, -1):  # half or less: one trim scheduled for the whole wave
        trimmer.note(count)
    await eventually(lambda: calls == [0], timeout=2, interval=0.01, what="the scheduled trim")
    trimmer.note(9)  # the new peak is what was left: no further trim
    assert trimmer._pending is None, "a trim was scheduled"  # nothing scheduled: nothing will run
    assert calls == [0]


def test_glibc_malloc_trim_is_found_here() -> None:
    assert process._malloc_trim is not None
    assert process._malloc_trim(0) in (0, 1)
