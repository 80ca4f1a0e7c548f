"""SSDP (UPnP discovery) responder: answers M-SEARCH, announces itself, serves its device description.

Run with examples/ssdp.yaml. Environment: SSDP_INTERFACE (the yaml's interface, also the
host of LOCATION in NOTIFY), SSDP_HTTP_PORT (device description server, default 8080),
SSDP_UUID (default: derived from the host name).
"""

import asyncio
import email.utils
import os
import random
import socket
import uuid

from gateway import interfaces
from gateway.consumer import UDPConsumer

DEVICE_TYPE = "urn:schemas-upnp-org:device:Basic:1"
UUID = os.environ.get("SSDP_UUID") or str(uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()))
HTTP_PORT = int(os.environ.get("SSDP_HTTP_PORT") or 8080)
ANNOUNCE = "ssdp.announce"  # the listener's send_channel
GROUP = "239.255.255.250:1900"
SERVER = "Linux/1 UPnP/1.1 udpgateway-ssdp/1.0"
MAX_AGE = 1800
MAX_DELAY = 5.0  # seconds; UDA caps MX at 5

DESCRIPTION = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion><major>1</major><minor>1</minor></specVersion>
  <device>
    <deviceType>{DEVICE_TYPE}</deviceType>
    <friendlyName>udpgateway SSDP example</friendlyName>
    <manufacturer>udpgateway</manufacturer>
    <modelName>udpgateway-ssdp</modelName>
    <UDN>uuid:{UUID}</UDN>
  </device>
</root>
""".encode()


def targets():
    """(NT/ST, USN) pairs this device answers for: root device, its uuid, its type."""
    udn = f"uuid:{UUID}"
    return [("upnp:rootdevice", f"{udn}::upnp:rootdevice"), (udn, udn), (DEVICE_TYPE, f"{udn}::{DEVICE_TYPE}")]


def parse(data):
    """(request line, {HEADER: value}) of an SSDP datagram."""
    lines = data.decode("utf-8", "replace").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().upper()] = value.strip()
    return lines[0], headers


def packet(first_line, headers):
    return ("\r\n".join([first_line, *(f"{k}: {v}" for k, v in headers.items())]) + "\r\n\r\n").encode()


def location(host):
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{HTTP_PORT}/description.xml"


def served_address():
    """SSDP_INTERFACE's IPv4 address: where the description is served, what NOTIFY points to."""
    found = interfaces.find_interface(os.environ.get("SSDP_INTERFACE", ""))
    return found.ipv4[0] if found and found.ipv4 else None


def local_host(message):
    """Our address on the interface the request came in on (the LOCATION clients can reach)."""
    found = interfaces.find_interface(message.get("interface") or "")
    if found and found.ipv4:
        return found.ipv4[0]
    return message["server"][0]


class SSDPResponder(UDPConsumer):
    async def udp_receive(self, message):
        request, headers = parse(message["data"])
        if not request.startswith("M-SEARCH") or headers.get("MAN", "").strip('"') != "ssdp:discover":
            return
        st = headers.get("ST", "")
        matches = [t for t in targets() if st in ("ssdp:all", t[0])]
        if not matches:
            return
        if "MX" in headers:  # multicast search: spread answers over [0, MX] seconds
            mx = float(headers["MX"]) if headers["MX"].isdigit() else 1.0
            await asyncio.sleep(random.uniform(0, min(max(mx, 1.0), MAX_DELAY)))
        for target, usn in matches:
            await self.reply(message, self.response(target, usn, local_host(message)))

    def response(self, target, usn, host):
        return packet("HTTP/1.1 200 OK", {
            "CACHE-CONTROL": f"max-age={MAX_AGE}", "DATE": email.utils.formatdate(usegmt=True), "EXT": "",
            "LOCATION": location(host), "SERVER": SERVER, "ST": target, "USN": usn,
        })

    async def startup(self):
        self.http = await asyncio.start_server(self.serve_description, served_address() or "0.0.0.0", HTTP_PORT)
        await self.notify("ssdp:alive")

    async def shutdown(self):
        await self.notify("ssdp:byebye")
        self.http.close()
        await self.http.wait_closed()

    async def notify(self, nts):
        host = served_address() or "127.0.0.1"
        for nt, usn in targets():
            headers = {"HOST": GROUP, "NT": nt, "NTS": nts, "USN": usn}
            if nts == "ssdp:alive":
                headers.update({"CACHE-CONTROL": f"max-age={MAX_AGE}", "LOCATION": location(host), "SERVER": SERVER})
            await self.send_to(ANNOUNCE, packet("NOTIFY * HTTP/1.1", headers))

    async def serve_description(self, reader, writer):
        """A minimal HTTP/1.1 server: GET /description.xml, anything else 404."""
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            found = request.split(b" ")[1:2] == [b"/description.xml"]
            body = DESCRIPTION if found else b"not found\n"
            status = "200 OK" if found else "404 Not Found"
            kind = "text/xml; charset=utf-8" if found else "text/plain"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


application = SSDPResponder.as_asgi()
