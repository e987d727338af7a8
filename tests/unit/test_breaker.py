from agent.store.breaker import Breaker


def test_breaker_allows_one_trial_per_interval() -> None:
    now = [0.0]
    breaker = Breaker(5.0, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    now[0] = 4.9
    assert not breaker.allow()
    now[0] = 5.0
    assert breaker.allow()  # the trial
    assert not breaker.allow()  # others wait while it runs
    breaker.failure()
    now[0] = 9.9
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow()
    assert breaker.failures == 2
