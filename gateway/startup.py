"""Shared by twistd and the CLI: load and validate a config file, or exit 2 with its problems."""

import sys

from gateway import config as config_module
from gateway.importing import import_from_string


def load_or_exit(path, *, host_checks=True, stderr=None):
    """The validated config, warnings printed; on problems print one line each and exit 2."""
    stderr = stderr or sys.stderr
    config, problems = config_module.load_config(path, host_checks=host_checks)
    for problem in problems:
        if problem.warning:
            print(f"warning: {problem}", file=stderr)
    refused = config_module.errors(problems)
    if refused or config is None:
        for problem in refused:
            print(problem, file=stderr)
        raise SystemExit(2)
    return config


def load_application(config):
    """The ASGI application of the config, or None (already validated by load_config)."""
    return import_from_string(config.application) if config.application else None
