"""SIGHUP reload: what changed between the running config and the file, and the listener swap that applies it."""

import asyncio
import dataclasses
import socket
from dataclasses import dataclass

from twisted.logger import Logger

from gateway import health
from gateway.config import errors, load_config

log = Logger()
# limits a running gateway applies at once; the others are sized at start (semaphores, queues, the memory layer).
LIVE_LIMITS = ("reply_ttl", "app_timeout", "interface_poll")
_NOT_RELOADED = ("path", "directory", "listeners", "limits")  # every other top-level key needs a restart


@dataclass(frozen=True)
class Plan:
    """What a reload does: listeners by name, the config to run, and what waits for a restart."""

    config: object             # the GatewayConfig to run: the file's listeners and live limits, the rest as running
    added: tuple = ()          # ListenerConfigs of new names
    changed: tuple = ()        # ListenerConfigs (new) of names whose keys changed: rebound
    removed: tuple = ()        # names no longer in the file
    unchanged: tuple = ()      # names kept with their sockets and reply channels
    live_limits: tuple = ()    # limits applied now
    restart: tuple = ()        # top-level keys (and "limits.<key>") whose change needs a restart


def load_checked(path):
    """The file's config, checked exactly as `udpgateway check` does; None (each problem logged) if refused."""
    config, problems = load_config(path)
    for problem in problems:
        log.warn("reload: {warning}{problem}", warning="warning: " if problem.warning else "", problem=problem)
    refused = errors(problems)
    if refused or config is None:
        log.error("reload: refused, {n} problem(s) in {path}; still serving with the running config",
                  n=len(refused), path=path)
        return None
    return config


def plan(running, new):
    """Compare the running GatewayConfig with the newly loaded one."""
    old = {l.name: l for l in running.listeners}
    fresh = {l.name: l for l in new.listeners}
    restart = [f.name for f in dataclasses.fields(running)
               if f.name not in _NOT_RELOADED and getattr(running, f.name) != getattr(new, f.name)]
    limits, live, waiting = running.limits, [], []
    for f in dataclasses.fields(limits):
        if getattr(limits, f.name) != getattr(new.limits, f.name):
            (live if f.name in LIVE_LIMITS else waiting).append(f.name)
    limits = dataclasses.replace(limits, **{key: getattr(new.limits, key) for key in live})
    return Plan(
        config=dataclasses.replace(running, listeners=new.listeners, limits=limits),
        added=tuple(l for name, l in fresh.items() if name not in old),
        changed=tuple(l for name, l in fresh.items() if name in old and old[name] != l),
        removed=tuple(name for name in old if name not in fresh),
        unchanged=tuple(name for name, l in fresh.items() if old.get(name) == l),
        live_limits=tuple(live),
        restart=tuple(restart) + tuple(f"limits.{key}" for key in waiting),
    )


def summary(plan):
    """The reload's last log line: "reload: added a, removed b, rebound c, unchanged d; ... needs a restart"."""
    parts = [f"{verb} {', '.join(names)}" for verb, names in (
        ("added", [l.name for l in plan.added]), ("removed", plan.removed),
        ("rebound", [l.name for l in plan.changed]), ("unchanged", plan.unchanged)) if names]
    notes = [f"limits {', '.join(plan.live_limits)} applied"] if plan.live_limits else []
    notes += [f"{key} change needs a restart" for key in plan.restart]
    return "reload: " + (", ".join(parts) or "no listeners") + "".join(f"; {note}" for note in notes)


class BindFailed(Exception):
    """A listener of the reload could not bind or start; the message is its one line."""


class ListenerSwap:
    """Binds a reload's listeners before the ones they replace close; a failed bind undoes the whole swap.

    A new listener whose port an outgoing one holds (same port, same family)
    can only bind once that one has closed: those outgoing listeners close
    first and are bound again from their old config if the reload fails.
    """

    def __init__(self, running, start_listener, adopts):
        self.running = running                # name -> running listener
        self.start_listener = start_listener  # ListenerConfig -> started listener, or raises BindFailed
        self.adopts = adopts                  # ListenerConfig -> True if it adopts an inherited socket
        self.started = {}                     # name -> listener bound for the reload
        self.closed = {}                      # name -> outgoing listener closed before the new binds
        self.lost = []                        # lines for outgoing listeners that could not be bound again

    async def bind(self, plan):
        """Bind every added and changed listener; on failure undo everything and raise BindFailed."""
        going = {name: self.running[name] for name in (*plan.removed, *(l.name for l in plan.changed))}
        coming = [*plan.added, *plan.changed]
        blocked = {l.name: self._blockers(l, going) for l in coming}
        try:
            for listener_config in coming:
                if not blocked[listener_config.name]:
                    self.started[listener_config.name] = self.start_listener(listener_config)
            self.closed = {name: going[name] for names in blocked.values() for name in names}
            await _close(*self.closed.values())
            for listener_config in coming:
                if blocked[listener_config.name]:
                    self.started[listener_config.name] = self.start_listener(listener_config)
        except BindFailed:
            await self._undo()
            raise
        return [listener for name, listener in going.items() if name not in self.closed]

    def _blockers(self, listener_config, going):
        """Names of outgoing listeners whose sockets hold this new listener's port."""
        if self.adopts(listener_config) or not listener_config.port:
            return []
        families = _families(listener_config)
        return [name for name, listener in going.items()
                if not (listener.kind == listener_config.type == "multicast")  # SO_REUSEADDR shares the port
                and not self.adopts(listener.config)  # the inherited fd keeps holding it anyway
                and any(port == listener_config.port and _family(host) in families
                        for host, port in listener.addresses())]

    async def _undo(self):
        await _close(*self.started.values())
        self.started = {}
        for name, listener in self.closed.items():
            try:
                self.running[name] = self.start_listener(listener.config)
            except BindFailed as exc:
                del self.running[name]
                self.lost.append(f"reload: listener {name} could not be bound again and is down: {exc}")
        self.closed = {}


async def _close(*listeners):
    """Stop every one (each stops reading at once), then wait until their sockets are closed."""
    await asyncio.gather(*[health.as_future(listener.stopService()) for listener in listeners])


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _families(listener_config):
    addresses = listener_config.groups if listener_config.type == "multicast" else listener_config.bind
    return {_family(address) for address in addresses} or {socket.AF_INET, socket.AF_INET6}
