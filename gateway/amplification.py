"""The amplification cap: unicast reply bytes per reply channel <= factor x the bytes its client sent."""


class ReplyBudget:
    """Per reply channel (token), the bytes it may still send: factor x received - sent.

    `factors` maps listener name -> factor, None for no cap (`amplification: null`).
    The gateway adds each datagram's UDP payload with `received`, asks `spend`
    before writing a unicast reply, and calls `forget` when the token goes
    (expired, evicted), so the accounting lives exactly as long as the channel.
    One float per live token, which the garbage collector does not track.
    """

    def __init__(self, factors):
        self.factors = {}
        self.set_factors(factors)
        self._credit = {}  # token -> bytes it may still send

    def set_factors(self, factors):
        """Listener name -> factor (None: no cap), as a reload changes them."""
        self.factors = {name: factor for name, factor in factors.items() if factor is not None}

    def __len__(self):
        return len(self._credit)

    def received(self, token, listener, size):
        """A datagram of `size` payload bytes from the client of `token` arrived on `listener`."""
        factor = self.factors.get(listener)
        if factor is not None:
            self._credit[token] = self._credit.get(token, 0.0) + factor * size

    def spend(self, token, listener, size):
        """Whether a reply of `size` bytes may go out on `token` (then it is counted); False: drop it."""
        if listener not in self.factors:
            return True
        credit = self._credit.get(token, 0.0)
        if size > credit:
            return False
        self._credit[token] = credit - size
        return True

    def forget(self, token):
        """The token expired or was evicted: its accounting goes with it."""
        self._credit.pop(token, None)


def make_budget(listener_configs):
    """The ReplyBudget of a set of listeners, or None when none of them has a cap."""
    budget = ReplyBudget({config.name: config.amplification for config in listener_configs})
    return budget if budget.factors else None
