"""Tests for gateway.amplification.ReplyBudget: reply bytes per channel bounded by factor x bytes received."""

import pytest

from gateway.amplification import ReplyBudget, make_budget
from gateway.config import ListenerConfig


def test_replies_up_to_factor_times_received():
    """A channel may send factor x the bytes its client sent, in any number of replies, and no more."""
    budget = ReplyBudget({"echo": 10})
    budget.received("t", "echo", 34)
    assert [budget.spend("t", "echo", 100) for _ in range(4)] == [True, True, True, False]
    assert budget.spend("t", "echo", 40)
    assert not budget.spend("t", "echo", 1)


def test_later_datagrams_add_credit():
    """Each datagram from the client adds factor x its payload to what the channel may send."""
    budget = ReplyBudget({"echo": 1})
    budget.received("t", "echo", 10)
    assert budget.spend("t", "echo", 10) and not budget.spend("t", "echo", 1)
    budget.received("t", "echo", 5)
    assert budget.spend("t", "echo", 5)


@pytest.mark.parametrize(
    "factor, size, allowed",
    [pytest.param(1.5, 34, 51, id="fractional-factor"), pytest.param(10, 0, 0, id="zero-length-datagram")],
)
def test_limit_is_exact(factor, size, allowed):
    """factor x bytes received is the limit to the byte: a factor of 1.5 lets 51 bytes answer 34, and a
    zero-length datagram gives its channel no credit."""
    budget = ReplyBudget({"echo": factor})
    budget.received("t", "echo", size)
    assert not budget.spend("t", "echo", allowed + 1)
    assert budget.spend("t", "echo", allowed)


def test_channels_are_accounted_separately():
    """One client's credit never pays for another's replies."""
    budget = ReplyBudget({"echo": 2})
    budget.received("a", "echo", 100)
    assert not budget.spend("b", "echo", 1)
    assert budget.spend("a", "echo", 200)


def test_no_cap_when_factor_is_none():
    """amplification: null on a listener: its replies are never refused and nothing is stored for them."""
    budget = ReplyBudget({"open": None, "echo": 10})
    budget.received("t", "open", 1)
    assert all(budget.spend("t", "open", 65507) for _ in range(100))
    assert len(budget) == 0


def test_forget_drops_the_accounting():
    """A forgotten token (expired, evicted) leaves no entry; a token never seen has no credit."""
    budget = ReplyBudget({"echo": 10})
    budget.received("t", "echo", 100)
    budget.forget("t")
    budget.forget("never-seen")
    assert len(budget) == 0
    assert not budget.spend("t", "echo", 1)


def test_make_budget_none_when_every_listener_is_uncapped():
    """A process whose listeners all say amplification: null keeps no budget."""
    assert make_budget([ListenerConfig(name="a", type="plain", port=0, amplification=None)]) is None
    budget = make_budget([ListenerConfig(name="a", type="plain", port=0),
                          ListenerConfig(name="b", type="plain", port=0, amplification=None)])
    assert budget.factors == {"a": 10.0}


def test_set_factors_keeps_the_accounting():
    """A reload's new factors apply to later datagrams; credit already earned stays."""
    budget = ReplyBudget({"echo": 1, "other": 1})
    budget.received("t", "echo", 10)
    budget.set_factors({"echo": 3, "other": None})
    budget.received("t", "echo", 10)
    assert budget.spend("t", "echo", 40) and not budget.spend("t", "echo", 1)
    assert budget.spend("u", "other", 1000)
