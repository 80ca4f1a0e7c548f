"""End to end over real loopback sockets: listeners, messages, replies, limits, applications."""

import asyncio
import json
import os
import time


from tests import apps
from tests.support import DEADLINE, aio, eventually, listener_address, stop

UNCAPPED = ", amplification: null"  # apps.Inspect answers with the message as JSON, far past 10 x a small datagram


def plain(name="echo", bind="127.0.0.1", extra=""):
    return f"  - {{name: {name}, type: plain, bind: '{bind}', port: 0{extra}}}\n"


def config(*listeners, limits=""):
    return "channel_layer: {backend: memory}\napplication: tests.apps:raw_echo\nlisteners:\n" + "".join(listeners) + limits


async def exchange(client, address, data, timeout=DEADLINE):
    client.send(data, address)
    return await client.receive(timeout)


@aio
async def test_plain_echo(gateway, client):
    """A plain listener's datagram is answered by the app, from the listener's port."""
    service = await gateway(config(plain()), app=apps.Echo.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    data, source = await exchange(c, address, b"hello")
    assert data == b"hello"
    assert source == address


@aio
async def test_plain_echo_ipv6(gateway, client):
    """IPv6 listeners work the same on ::1."""
    service = await gateway(config(plain(bind="::1")), app=apps.Echo.as_asgi())
    c = await client("::1")
    data, source = await exchange(c, listener_address(service, "echo"), b"six")
    assert (data, source[0]) == (b"six", "::1")


@aio
async def test_message_fields(gateway, client):
    """udp.receive carries type, reply_channel, client, server, listener and the interface."""
    service = await gateway(config(plain(extra=UNCAPPED)), app=apps.Inspect.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    data, _ = await exchange(c, address, b"abc")
    message = json.loads(data)
    assert message["type"] == "udp.receive"
    assert message["client"] == list(c.address)
    assert message["server"] == list(address)
    assert message["listener"] == "echo"
    assert message["interface"] == "lo"
    assert message["size"] == 3
    prefix, token = message["reply_channel"].split("!")
    assert prefix.startswith("udp.send.") and token
    assert "127" not in token and str(c.address[1]) not in token
    again = json.loads((await exchange(c, address, b"x"))[0])
    assert again["reply_channel"] == message["reply_channel"]


@aio
async def test_wildcard_server_is_real_destination(gateway, client):
    """A listener bound to 0.0.0.0 reports the datagram's real destination and interface."""
    service = await gateway(config(plain(bind="0.0.0.0", extra=UNCAPPED)), app=apps.Inspect.as_asgi())
    c = await client()
    port = listener_address(service, "echo")[1]
    data, source = await exchange(c, ("127.0.0.1", port), b"?")
    message = json.loads(data)
    assert message["server"] == ["127.0.0.1", port]
    assert message["interface"] == "lo"
    assert source == ("127.0.0.1", port)


@aio
async def test_three_listeners_reply_from_their_own_ports(gateway, client):
    """With three listeners and one app, each reply leaves from the port its request arrived on."""
    service = await gateway(config(*(plain(name, extra=UNCAPPED) for name in "abc")), app=apps.Inspect.as_asgi())
    c = await client()
    channels = set()
    for name in "abc":
        address = listener_address(service, name)
        data, source = await exchange(c, address, name.encode())
        assert source == address
        message = json.loads(data)
        assert message["listener"] == name
        channels.add(message["reply_channel"])
    assert len(channels) == 3


@aio
async def test_big_empty_and_binary_datagrams_byte_exact(gateway, client):
    """A 60,000-byte datagram arrives whole; empty and random binary datagrams echo byte-exact."""
    service = await gateway(config(plain()), app=apps.Echo.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    for payload in (os.urandom(60000), b"", os.urandom(512), bytes(range(256))):
        data, _ = await exchange(c, address, payload)
        assert data == payload


@aio
async def test_connected_listener_hears_only_its_remote(gateway, client):
    """A connected listener answers its remote, ignores others, and sends send_channel messages to it."""
    remote, stranger = await client(), await client()
    listener = ("  - {name: up, type: connected, bind: 127.0.0.1, port: 0, send_channel: up.out, "
                f"remote: {{host: 127.0.0.1, port: {remote.address[1]}}}}}\n")
    service = await gateway(config(listener), app=apps.Echo.as_asgi())
    address = listener_address(service, "up")
    data, source = await exchange(remote, address, b"from remote")
    assert (data, source) == (b"from remote", address)
    stranger.send(b"from stranger", address)
    assert await remote.flush(address) == []  # the gateway has answered everything sent before the marker
    assert stranger.received == []
    await service.layer.send("up.out", {"type": "udp.send", "data": b"pushed"})
    assert await remote.receive() == (b"pushed", address)


@aio
async def test_app_that_raises_keeps_gateway_serving(gateway, client):
    """An exception in the app is counted and the next datagram is still answered."""
    service = await gateway(config(plain()), app=apps.Raising.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    c.send(b"boom", address)
    assert (await exchange(c, address, b"after"))[0] == b"after"
    assert service.counters.get("app_errors") == 1


@aio
async def test_bad_replies_dropped_good_one_still_goes_out(gateway, client):
    """Every bad reply of design.md is dropped and counted; the good reply after them arrives."""
    service = await gateway(config(plain()), app=apps.Replies.as_asgi())
    c = await client()
    script = ["WRONG_TYPE", "NO_DATA", "STR_DATA", "HUGE", "BAD_TOKEN", "GOOD"]
    data, _ = await exchange(c, listener_address(service, "echo"), json.dumps(script).encode())
    assert data == b"good"
    assert await c.flush(listener_address(service, "echo"), json.dumps(["GOOD"]).encode(), answer=b"good") == []
    counts = service.counters.snapshot()
    assert counts.get("dropped_bad_message") == 3
    assert counts.get("dropped_too_large") == 1
    assert counts.get("dropped_unknown_token") == 1


@aio
async def test_expired_reply_channel_is_dropped(gateway, client):
    """Past reply_ttl, a reply channel no longer reaches its client."""
    service = await gateway(config(plain(extra=UNCAPPED), limits="limits: {reply_ttl: 0.3}\n"),
                            app=apps.Inspect.as_asgi())
    c = await client()
    message = json.loads((await exchange(c, listener_address(service, "echo"), b"x"))[0])
    await asyncio.sleep(0.5)
    await service.layer.send(message["reply_channel"], {"type": "udp.send", "data": b"late"})
    await eventually(lambda: service.counters.get("dropped_unknown_token") == 1)
    assert await c.flush(listener_address(service, "echo"), answer=lambda data: data != b"late") == []
    assert service.counters.get("dropped_unknown_token") == 1


@aio
async def test_wall_clock_step_keeps_reply_channels(gateway, client, monkeypatch):
    """A wall-clock step longer than reply_ttl leaves reply channels (and QuietLog) on the monotonic clock."""
    from twisted.internet import reactor

    from gateway.clock import MONOTONIC

    service = await gateway(config(plain(extra=UNCAPPED), limits="limits: {reply_ttl: 5}\n"),
                            app=apps.Inspect.as_asgi())
    c = await client()
    message = json.loads((await exchange(c, listener_address(service, "echo"), b"x"))[0])
    step = 3600 + time.time()
    monkeypatch.setattr(time, "time", lambda: step)
    monkeypatch.setattr(reactor, "seconds", lambda: step)
    await service.layer.send(message["reply_channel"], {"type": "udp.send", "data": b"after the step"})
    assert (await c.receive())[0] == b"after the step"
    assert service.tokens.clock is MONOTONIC and service.quiet.clock is MONOTONIC


@aio
async def test_least_recently_used_reply_channel_forgotten(gateway, client):
    """Past max_reply_channels the least recently used client's channel is forgotten."""
    service = await gateway(config(plain(extra=UNCAPPED), limits="limits: {max_reply_channels: 2}\n"),
                            app=apps.Inspect.as_asgi())
    address = listener_address(service, "echo")
    clients = [await client() for _ in range(3)]
    channels = [json.loads((await exchange(c, address, b"x"))[0])["reply_channel"] for c in clients]
    for c, channel in zip(clients, channels):
        await service.layer.send(channel, {"type": "udp.send", "data": b"still?"})
    await clients[1].receive()
    await clients[2].receive()
    await eventually(lambda: service.counters.get("dropped_unknown_token") == 1)
    assert await clients[0].flush(address, answer=lambda data: data != b"still?") == []
    assert service.counters.get("dropped_unknown_token") == 1


@aio
async def test_past_max_concurrency_datagrams_are_dropped_not_queued(gateway, client):
    """With max_concurrency 2, a third and fourth datagram are dropped at once, not queued."""
    apps.Slow.release, apps.Slow.peak = asyncio.Event(), 0
    service = await gateway(config(plain(), limits="limits: {max_concurrency: 2}\n"), app=apps.Slow.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    for n in range(4):
        c.send(b"%d" % n, address)
    await eventually(lambda: service.counters.get("received") == 4, what="4 datagrams received")
    assert service.counters.get("dropped_concurrency") == 2
    await eventually(lambda: apps.Slow.active == 2, what="both admitted calls running")  # then release them
    apps.Slow.release.set()
    replies = await c.receive(count=2)
    assert sorted(d for d, _ in replies) == [b"0", b"1"]
    assert apps.Slow.peak == 2
    assert await c.flush(address) == []  # the dropped two are never answered


@aio
async def test_lifespan_startup_and_shutdown_order(gateway, client):
    """Lifespan startup runs before the first datagram and shutdown after the last, before close."""
    apps.Recorder.events = []
    service = await gateway(config(plain()), app=apps.Recorder.as_asgi())
    assert apps.Recorder.events == ["startup"]
    c = await client()
    assert (await exchange(c, listener_address(service, "echo"), b"1"))[0] == b"ok:1"
    await stop(service)
    assert apps.Recorder.events == ["startup", ("message", b"1"), "shutdown"]


@aio
async def test_app_without_lifespan_runs_and_replies_through_send(gateway, client):
    """A bare ASGI app that raises on lifespan runs without it; `send(udp.send)` answers the message."""
    service = await gateway(config(plain()), app=apps.raw_echo)
    assert service.lifespan.supported is False
    c = await client()
    assert (await exchange(c, listener_address(service, "echo"), b"bare"))[0] == b"bare"


@aio
async def test_looping_consumer_gets_one_message_per_instance(gateway, client):
    """A Channels-style consumer that loops on receive() handles one message per instance."""
    apps.Looping.instances, apps.Looping.handled = 0, []
    service = await gateway(config(plain()), app=apps.Looping.as_asgi())
    c = await client()
    address = listener_address(service, "echo")
    for n in range(3):
        assert (await exchange(c, address, b"%d" % n))[0] == b"%d" % n
    assert apps.Looping.instances == 3
    assert len({consumer for consumer, _ in apps.Looping.handled}) == 3
    assert service.runner.active == 0
    assert service.counters.get("app_errors") == 0


@aio
async def test_datagrams_between_bind_and_start_are_dropped_not_ready(write_config, client):
    """Ports are bound in privilegedStartService; what arrives before the start completes is counted dropped_not_ready."""
    from tests.support import build_service, wait

    service = build_service(write_config(config(plain())), app=apps.Echo.as_asgi())
    service.privilegedStartService()
    try:
        c = await client()
        address = listener_address(service, "echo")
        c.send(b"early", address)
        for _ in range(200):  # bounded: the datagram is read within a few reactor turns
            if service.counters.get("dropped_not_ready"):
                break
            await asyncio.sleep(0.01)
        assert service.counters.get("dropped_not_ready") == 1
        service.startService()
        await wait(service.started, 10)
        assert await exchange(c, address, b"later") == (b"later", address)
        assert service.counters.get("received") == 2
    finally:
        await stop(service)
