"""mDNS / DNS-SD responder (RFC 6762, RFC 6763) for one service instance, with dnslib for the wire format.

Run with examples/mdns.yaml. Environment: MDNS_INSTANCE (default "Gateway"), MDNS_SERVICE
(default "_http._tcp"), MDNS_HOST (default "gateway"), MDNS_PORT (the service's port,
default 8080), MDNS_TXT (comma-separated key=value items, default "path=/").
A/AAAA answers carry the addresses of the interface the query arrived on.
"""

import os

from dnslib import AAAA, CLASS, PTR, QTYPE, RR, SRV, TXT, A, DNSError, DNSHeader, DNSLabel, DNSRecord

from gateway import interfaces
from gateway.consumer import UDPConsumer

SERVICE = DNSLabel(f"{os.environ.get('MDNS_SERVICE') or '_http._tcp'}.local")
INSTANCE = DNSLabel([(os.environ.get("MDNS_INSTANCE") or "Gateway").encode(), *SERVICE.label])
HOST = DNSLabel(f"{os.environ.get('MDNS_HOST') or 'gateway'}.local")
PORT = int(os.environ.get("MDNS_PORT") or 8080)
TXT_ITEMS = (os.environ.get("MDNS_TXT") or "path=/").split(",")
SERVICES = DNSLabel("_services._dns-sd._udp.local")

MDNS_PORT = 5353
HOST_TTL, OTHER_TTL, LEGACY_TTL = 120, 4500, 10  # RFC 6762 §10 and §6.7
CACHE_FLUSH, QU = 0x8000, 0x8000  # top bit of rrclass / qclass (RFC 6762 §10.2, §5.4)


def records(name, qtype, interface):
    """(answers, additionals) for one question, as (name, type, ttl, rdata, unique) tuples."""
    ipv4, ipv6 = (interface.ipv4, interface.ipv6) if interface else ((), ())
    hosts = [(HOST, QTYPE.A, HOST_TTL, A(a), True) for a in ipv4] + \
            [(HOST, QTYPE.AAAA, HOST_TTL, AAAA(a), True) for a in ipv6]
    srv = (INSTANCE, QTYPE.SRV, HOST_TTL, SRV(0, 0, PORT, HOST), True)
    txt = (INSTANCE, QTYPE.TXT, OTHER_TTL, TXT(TXT_ITEMS), True)
    table = [
        (SERVICES, QTYPE.PTR, OTHER_TTL, PTR(SERVICE), False),
        (SERVICE, QTYPE.PTR, OTHER_TTL, PTR(INSTANCE), False),
        srv, txt, *hosts,
    ]
    answers = [r for r in table if r[0] == name and qtype in (r[1], QTYPE.ANY)]
    extra = {QTYPE.PTR: [srv, txt, *hosts], QTYPE.SRV: hosts}
    additionals = [r for a in answers if a[0] != SERVICES for r in extra.get(a[1], ()) if r not in answers]
    return answers, additionals


class MDNSResponder(UDPConsumer):
    async def udp_receive(self, message):
        try:
            query = DNSRecord.parse(message["data"])
        except DNSError:
            return
        if query.header.qr or query.header.opcode:  # responses and non-queries
            return
        legacy = message["client"][1] != MDNS_PORT  # RFC 6762 §6.7: a plain DNS resolver
        interface = interfaces.find_interface(message.get("interface") or "")
        answers, additionals, unicast = [], [], legacy
        for question in query.questions:
            found, extra = records(question.qname, question.qtype, interface)
            answers += [r for r in found if r not in answers]
            additionals += [r for r in extra if r not in additionals and r not in answers]
            unicast = unicast or bool(found and question.qclass & QU)
        if answers:
            response = self.response(query, answers, additionals, legacy)
            await self.reply(message, response.pack(), multicast=not unicast)

    def response(self, query, answers, additionals, legacy):
        """Legacy unicast echoes the ID and questions, TTLs at most 10 s, no cache-flush bit."""
        header = DNSHeader(id=query.header.id if legacy else 0, qr=1, aa=1)
        response = DNSRecord(header, questions=query.questions if legacy else [])
        for add, entries in ((response.add_answer, answers), (response.add_ar, additionals)):
            for name, qtype, ttl, rdata, unique in entries:
                rclass = CLASS.IN | (CACHE_FLUSH if unique and not legacy else 0)
                add(RR(name, qtype, rclass=rclass, ttl=min(ttl, LEGACY_TTL) if legacy else ttl, rdata=rdata))
        return response


application = MDNSResponder.as_asgi()
