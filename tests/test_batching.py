"""Work that may wait a little is done in batches: start_seconds deadlines on a grid (SlackTimers)
and event lines on stderr. Both run on a real event loop here; nothing is mocked."""

from __future__ import annotations

import asyncio
import io
import logging
import time

from exec_supervisor.events import locallog
from exec_supervisor.events import Event
from exec_supervisor.supervise.timers import TIMER_SLACK, SlackTimers


def test_a_slack_timer_never_runs_before_its_deadline_and_runs_without_other_work() -> None:
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        timers = SlackTimers()
        ran: asyncio.Future[float] = loop.create_future()
        when = loop.time() + 0.03
        timers.call_at(when, lambda token: ran.set_result(loop.time()), when)
        return when, await asyncio.wait_for(ran, 5)

    when, ran_at = asyncio.run(scenario())
    assert ran_at >= when


def test_a_pass_that_runs_anyway_takes_the_due_slots_and_their_wakeups_are_cancelled() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        timers = SlackTimers()
        calls: list[tuple[str, float]] = []
        when = loop.time() + 0.05
        timers.call_at(when, lambda token: calls.append(("first", token)), 1.0)
        timers.call_at(when, lambda token: calls.append(("same slot", token)), 2.0)
        timers.call_at(when + 10, lambda token: calls.append(("later", token)), 3.0)
        wakeups = dict(timers._wakeups)
        assert len(wakeups) == 2, "one wake-up per grid slot, not per timer"

        timers.run_due(when - TIMER_SLACK)  # before the slot's time: nothing is due
        assert calls == []
        timers.run_due(when + TIMER_SLACK)
        assert calls == [("first", 1.0), ("same slot", 2.0)], "a slot's entries run together, in order"
        due_slot = min(wakeups)
        assert wakeups[due_slot].cancelled(), "the slot needs no wake-up of its own any more"
        assert not wakeups[max(wakeups)].cancelled()
        timers.run_due(when + TIMER_SLACK)
        assert len(calls) == 2, "a slot runs once"
        wakeups[max(wakeups)].cancel()

    asyncio.run(scenario())


def test_a_failing_timer_callback_does_not_stop_the_others(caplog) -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        timers = SlackTimers()
        done: asyncio.Future[list[float]] = loop.create_future()
        seen: list[float] = []

        def fail(token: float) -> None:
            raise RuntimeError("boom")

        when = loop.time()
        timers.call_at(when, fail, 1.0)
        timers.call_at(when, lambda token: (seen.append(token), done.set_result(seen)), 2.0)
        return await asyncio.wait_for(done, 5)

    assert asyncio.run(scenario()) == [2.0]
    assert "timer callback" in caplog.text and "boom" in caplog.text


def _event(exec_id: str, made_at: float) -> Event:
    return Event(event="running", level="info", supervisor="t", exec_id=exec_id, pid=1, time=made_at)


def _handler() -> tuple[locallog._StderrHandler, io.StringIO]:
    handler = locallog._StderrHandler(locallog._TerminalFormatter())
    stream = io.StringIO()
    handler.setStream(stream)
    return handler, stream


def test_event_lines_are_written_by_a_later_event_in_order() -> None:
    handler, stream = _handler()

    async def scenario() -> None:
        start = time.time()
        handler.hold_event(logging.INFO, _event("ET-A-1", start))
        handler.hold_event(logging.INFO, _event("ET-A-2", start + 0.01))
        assert stream.getvalue() == "", "held: written many at a time"
        handler.hold_event(logging.INFO, _event("ET-A-3", start + locallog.EVENT_LINES_DELAY + 0.001))
        lines = stream.getvalue().splitlines()
        assert [line.split()[-4] for line in lines] == ["ET-A-1:", "ET-A-2:", "ET-A-3:"]
        assert all(line.endswith("running (pid 1)") and " INFO " in line for line in lines)

    asyncio.run(scenario())


def test_held_event_lines_are_written_when_no_more_events_come() -> None:
    handler, stream = _handler()

    async def scenario() -> None:
        handler.hold_event(logging.INFO, _event("ET-A-1", time.time()))
        assert stream.getvalue() == ""
        for _ in range(500):
            if stream.getvalue():
                break
            await asyncio.sleep(0.01)
        assert "ET-A-1: running (pid 1)" in stream.getvalue()

    asyncio.run(scenario())


def test_event_lines_without_an_event_loop_are_written_at_once() -> None:
    handler, stream = _handler()
    handler.hold_event(logging.INFO, _event("ET-A-1", time.time()))
    assert "ET-A-1: running (pid 1)" in stream.getvalue()


def test_a_record_logged_on_another_thread_writes_the_held_lines_first() -> None:
    handler, stream = _handler()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handler.hold_event(logging.INFO, _event("ET-A-1", time.time()))
        timer = handler._write_handle
        assert timer is not None
        record = logging.LogRecord("exec_supervisor", logging.WARNING, __file__, 1, "from the sender", None, None)
        await asyncio.to_thread(handler.handle, record)
        lines = stream.getvalue().splitlines()
        assert [line.split(None, 3)[-1] for line in lines] == ["ET-A-1: running (pid 1)", "from the sender"]
        assert not timer.cancelled(), "not cancelled from the other thread"
        past_the_timer = loop.create_future()
        loop.call_at(timer.when() + 0.001, past_the_timer.set_result, None)
        await asyncio.wait_for(past_the_timer, 5)
        assert stream.getvalue().splitlines() == lines, "the timer wrote nothing twice"

    asyncio.run(scenario())
