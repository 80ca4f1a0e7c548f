"""An ordinary Channels consumer: udpgateway's udp.receive messages go to udp_receive."""

from channels.consumer import AsyncConsumer


class UDPEcho(AsyncConsumer):
    """Answers each datagram with its own bytes, through the gateway that received it."""

    async def udp_receive(self, message):
        await self.channel_layer.send(message["reply_channel"], {"type": "udp.send", "data": message["data"]})
