"""Real discovery clients, run inside the client namespace; each prints one JSON object and is bounded.

    python tests/discovery_clients.py ssdp SOURCE_ADDRESS [SECONDS]
    python tests/discovery_clients.py mdns INTERFACE_ADDRESS_OR_INDEX SERVICE_TYPE [SECONDS]
"""

import asyncio
import json
import sys


async def ssdp(source, seconds):
    """async-upnp-client's M-SEARCH (ssdp:all, MX 1), then its device description fetch of one LOCATION."""
    from async_upnp_client.aiohttp import AiohttpRequester
    from async_upnp_client.client_factory import UpnpFactory
    from async_upnp_client.search import SsdpSearchListener

    responses, done = [], asyncio.Event()

    async def on_response(headers):
        responses.append({key: str(value) for key, value in headers.items() if not key.startswith("_")})
        if len(responses) >= 3:
            done.set()

    listener = SsdpSearchListener(async_callback=on_response, source=(source, 0), timeout=1)
    await listener.async_start()
    listener.async_search()
    try:
        await asyncio.wait_for(done.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    listener.async_stop()
    device = None
    if responses:
        factory = UpnpFactory(AiohttpRequester(timeout=20))
        found = await asyncio.wait_for(factory.async_create_device(responses[0]["location"]), seconds)
        device = {"udn": found.udn, "device_type": found.device_type, "friendly_name": found.name}
    return {"responses": responses, "device": device}


async def mdns(interface, service_type, seconds):
    """python-zeroconf browses `service_type` on one interface and resolves what it finds."""
    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

    six = interface.isdigit() or ":" in interface
    version = IPVersion.V6Only if six else IPVersion.V4Only
    aiozc = AsyncZeroconf(interfaces=[int(interface) if interface.isdigit() else interface], ip_version=version)
    names, found = [], asyncio.Event()

    def on_change(zeroconf, service_type, name, state_change):
        names.append(name)
        found.set()

    browser = AsyncServiceBrowser(aiozc.zeroconf, [service_type], handlers=[on_change])
    result = {"names": names, "resolved": None}
    try:
        await asyncio.wait_for(found.wait(), seconds)
        info = AsyncServiceInfo(service_type, names[0])
        if await info.async_request(aiozc.zeroconf, int(seconds * 1000)):
            result["resolved"] = {"server": info.server, "port": info.port, "addresses": info.parsed_addresses(),
                                  "properties": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}}
    except asyncio.TimeoutError:
        pass
    finally:
        await browser.async_cancel()
        await aiozc.async_close()
    return result


def main(argv):
    kind, args = argv[0], argv[1:]
    if kind == "ssdp":
        result = asyncio.run(ssdp(args[0], float(args[1]) if len(args) > 1 else 5))
    else:
        result = asyncio.run(mdns(args[0], args[1], float(args[2]) if len(args) > 2 else 5))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
