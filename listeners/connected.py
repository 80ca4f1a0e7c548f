"""Connected UDP: `listenUDP` + `transport.connect`; only the remote peer is heard and answered."""

from listeners import activation, sockopts
from listeners.base import BaseListener, log


class ConnectedListener(BaseListener):
    """Receives only from `remote`; replies and send_channel messages go to it."""

    kind = "connected"

    def bind_addresses(self):
        """Only addresses of the remote's family can be connected to it."""
        family = sockopts.family_of(self.config.remote.host)
        return [host for host in self.config.bind if sockopts.family_of(host) == family]

    def adopted_problem(self, fd, family, address):
        remote = sockopts.family_of(self.config.remote.host)
        if family != remote:
            return (f"fd {fd} is an {activation.family_name(family)} socket but remote "
                    f"{self.config.remote.host} is {activation.family_name(remote)}")
        return super().adopted_problem(fd, family, address)

    def port_started(self, port):
        port.connect(self.config.remote.host, self.config.remote.port)

    def log_port(self, port):
        super().log_port(port)
        remote = self.config.remote
        log.info("listener {name} connected to {host}:{port}", name=self.name, host=remote.host, port=remote.port)

    def send_reply(self, route, data, multicast=False):
        if multicast:
            return super().send_reply(route, data, multicast)
        return self.announce(data)

    def announce(self, data):
        """Send to the remote through the first connected socket."""
        return bool(self.ports) and self.write(self.ports[0], data, None)
