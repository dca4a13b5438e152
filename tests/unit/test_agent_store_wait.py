"""An agent that cannot reach its store while it starts waits for it, whatever step of the
start meets the outage (the campaign saw an agent, restarted under load, exit because its
lease grant got no answer within the lease's 0.15 s request timeout)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from vigil.agent import daemon
from vigil.agent.config import AgentConfig
from vigil.agent.daemon import Agent
from vigil.errors import ConfigError, StoreUnavailable


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Agent:
    monkeypatch.setattr(daemon, "STORE_RETRY", 0.01)
    config = AgentConfig(
        server="node1",
        store=f"sqlite:///{tmp_path / 'store.db'}",
        state_dir=tmp_path / "state",
        tokens_file=tmp_path / "tokens.toml",
    )
    return Agent(config)


class Outage:
    """A store step that gets no answer ``times`` times, then answers."""

    def __init__(self, times: int) -> None:
        self.left, self.calls = times, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.left:
            self.left -= 1
            raise StoreUnavailable("etcd unavailable within 0.15 s")
        return "granted"


async def test_a_step_the_store_does_not_answer_is_tried_again_until_it_does(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vigil.agent")
    step = Outage(times=3)
    assert await agent._patiently(step) == "granted"
    assert step.calls == 4
    waiting = [r for r in caplog.records if r.getMessage().startswith("waiting for the store")]
    assert len(waiting) == 1, "one warning per outage, not one per try"
    assert any("the store answers after" in r.getMessage() for r in caplog.records)


async def test_an_agent_asked_to_stop_stops_waiting(agent: Agent) -> None:
    step = Outage(times=10**9)
    waiting = asyncio.create_task(agent._patiently(step))
    await asyncio.sleep(0.05)
    agent.stop()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(waiting, 10)


async def test_settings_it_can_never_use_end_the_wait_at_once(agent: Agent) -> None:
    async def unsafe() -> None:
        raise ConfigError("lease timing: ttl 0.8s is below the store's minimum")

    with pytest.raises(ConfigError):
        await asyncio.wait_for(agent._patiently(unsafe), 10)
