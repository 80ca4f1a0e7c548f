"""The reply pump: ONE loop drains every reply channel of this process into the listeners."""

import asyncio
import functools

from twisted.logger import Logger

from gateway.layers.client import as_client
from gateway.layers.errors import error_text
from gateway.messages import BadReply, validate_send
from listeners.base import BadRoute, Route

log = Logger()
_RETRY_DELAY = 1.0
_FLUSH_WAIT = 0.05  # how long stop() waits for one more queued send_channel message


class ReplyPump:
    """Routes `udp.send` messages from `udp.send.<id>!<token>` and send_channels to listeners.

    With a layer that receives a whole `!` prefix at once (ours, channels_redis)
    one receive loop serves every client. Other layers get one receive per
    live token, bounded by the token table's cap.
    """

    def __init__(self, layer, prefix, tokens, listeners, send_channels, *, counters, quiet, budget=None):
        self.layer = layer
        self.prefix = prefix
        self.tokens = tokens
        self.listeners = listeners          # name -> listener
        self.send_channels = send_channels  # channel -> listener
        self.counters = counters
        self.quiet = quiet
        self.budget = budget                # the amplification cap (ReplyBudget), or None
        client = as_client(layer)
        self.prefix_receive = client.prefix_receive
        self._receive = client.receive
        self._receive_single = client.receive_prefixed
        self._loops = []
        self._send_loops = {}  # send_channel -> its receive loop
        self._watchers = {}

    def start(self):
        if self.prefix_receive:
            self._loops.append(asyncio.ensure_future(self._loop(self._receive_prefixed)))
        else:
            log.info("the channel layer cannot receive a whole reply prefix: one receive per "
                     "live reply channel (costs more per client)")
        for channel in self.send_channels:
            self._send_loops[channel] = asyncio.ensure_future(self._loop(self._receiver(channel)))

    def set_send_channels(self, send_channels):
        """A reload changed the listeners: receive on new send_channels, no longer on dropped ones."""
        for channel in self.send_channels.keys() - send_channels.keys():
            self._send_loops.pop(channel).cancel()
        for channel in send_channels.keys() - self.send_channels.keys():
            self._send_loops[channel] = asyncio.ensure_future(self._loop(self._receiver(channel)))
        self.send_channels = dict(send_channels)

    def stop(self):
        for task in self._loops + list(self._send_loops.values()) + list(self._watchers.values()):
            task.cancel()
        self._loops, self._send_loops, self._watchers = [], {}, {}

    # -- receiving -------------------------------------------------------
    async def _receive_prefixed(self, timeout=None):
        return await self._receive_single(self.prefix, timeout)

    def _receiver(self, channel):
        async def receive(timeout=None):
            message = await self._receive(channel, timeout)
            return None if message is None else (channel, message)
        return receive

    async def _loop(self, receive):
        while True:
            try:
                channel, message = await receive()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.counters.incr("layer_errors")
                self.quiet.warn("pump-receive", "receiving replies failed: {err}", err=error_text(exc))
                await asyncio.sleep(_RETRY_DELAY)
                continue
            self.handle(channel, message)

    def watch(self, token):
        """Layers without prefix receive: start a receive for a new reply channel.

        Returns a future done once that receive began (or its task ended
        first), None when the channel has one already. Sending the datagram
        only then keeps its replies from being published before a pub/sub
        layer subscribed: its receive subscribes before it first yields, and
        its subscribes and publishes take turns in call order.
        """
        if self.prefix_receive or token in self._watchers:
            return None
        begun = asyncio.get_running_loop().create_future()
        task = self._watchers[token] = asyncio.ensure_future(self._watch(self._receiver(self.prefix + token), begun))
        task.add_done_callback(functools.partial(_settle, begun))  # cancelled before it ran: nobody waits forever
        return begun

    async def _watch(self, receive, begun):
        begun.set_result(None)  # those waiting run after this step, which reaches the layer's subscribe
        await self._loop(receive)

    def unwatch(self, token):
        task = self._watchers.pop(token, None)
        if task is not None:
            task.cancel()

    async def flush(self):
        """Write what is still queued (replies, SSDP byebye on send_channels) before the ports close."""
        receivers = [self._receiver(c) for c in self.send_channels]
        if self.prefix_receive:
            receivers.append(self._receive_prefixed)
        for receive in receivers:
            for _ in range(10000):  # bounded: a stop must end
                try:
                    received = await receive(_FLUSH_WAIT)
                except Exception:
                    break
                if received is None:
                    break
                self.handle(*received)

    # -- routing ---------------------------------------------------------
    def handle(self, channel, message):
        """Send one message to its listener, or drop it with a counted reason."""
        try:
            sent_by = self._route(channel, message)
        except (BadReply, BadRoute) as exc:
            self.counters.incr(f"dropped_{exc.reason}", listener=self._listener_name(channel))
            self.quiet.warn(f"drop-{exc.reason}", "dropped a reply on {channel}: {why}",
                            channel=channel[:100], why=exc)
            return
        if sent_by is not None:
            self.counters.incr("replied", listener=sent_by)

    def _listener_name(self, channel):
        """The name of the listener a channel's messages go out through, None for an unknown token."""
        if channel in self.send_channels:
            return self.send_channels[channel].name
        entry = self.tokens.lookup(channel[len(self.prefix):]) if channel.startswith(self.prefix) else None
        return None if entry is None else entry[0]

    def _route(self, channel, message):
        """The name of the listener that wrote the message, None if it could not leave; or raise."""
        if channel in self.send_channels:
            listener = self.send_channels[channel]
            data, _multicast = validate_send(message, version=listener.send_version())
            return listener.name if listener.announce(data) else None
        token = channel[len(self.prefix):] if channel.startswith(self.prefix) else None
        entry = self.tokens.lookup(token) if token else None
        if entry is None:
            raise BadReply("unknown_token", "unknown or expired reply channel")
        name, version = entry[0], entry[1]
        data, multicast = validate_send(message, version=version)
        listener = self.listeners.get(name)
        if listener is None or not listener.running:
            raise BadReply("unknown_token", f"listener {name} is stopped")
        if not multicast and self.budget is not None and not self.budget.spend(token, name, len(data)):
            raise BadReply("amplification", "the reply channel's replies would exceed amplification x the "
                           "bytes its client sent")
        route = Route(*entry[2:])  # delivery.stored_route: the fields, the trailing defaults left out
        return name if listener.send_reply(route, data, multicast) else None


class DirectReplies:
    """The layer as the application sees it on the memory layer: its own replies skip the queue.

    A send to one of this process's reply channels is checked as the layer
    checks it (name, dict) and handed to the pump, which validates and writes it
    before send() returns: no event-loop hop, and no shared queue whose capacity
    one call's many replies could exhaust for every other client. Everything
    else (other channels, groups, receive) is the layer's own behaviour.
    """

    def __init__(self, layer, pump):
        self.inner = layer
        self._pump = pump
        self._prefix = pump.prefix
        self._check_name = layer.require_valid_channel_name

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def send(self, channel, message):
        if isinstance(channel, str) and channel.startswith(self._prefix):
            assert isinstance(message, dict), "message is not a dict"
            self._check_name(channel)
            self._pump.handle(channel, message)
            return
        await self.inner.send(channel, message)


def _settle(future, _task):
    if not future.done():
        future.set_result(None)
