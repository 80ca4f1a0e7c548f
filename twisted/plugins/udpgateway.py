from twisted.application.service import ServiceMaker

udpgateway = ServiceMaker(
    "udpgateway", "gateway.tap", "UDP listeners in and out of ASGI/Channels channel layers.", "udpgateway"
)
