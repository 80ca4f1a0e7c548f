"""Echo every datagram back to its sender: the application of the shipped gateway.yaml."""

from gateway.consumer import UDPConsumer


class Echo(UDPConsumer):
    async def udp_receive(self, message):
        await self.reply(message, message["data"])


application = Echo.as_asgi()
