import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
__version__ = re.search(r'__version__ = "(.+)"', (HERE / "gateway" / "__init__.py").read_text())[1]

setup(
    name="udpgateway",
    version=__version__,
    description="UDP listeners (plain, connected, multicast) in and out of ASGI/Channels channel layers",
    long_description=(HERE / "README.rst").read_text(encoding="utf-8"),
    long_description_content_type="text/x-rst",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    # twisted/plugins has no __init__.py on purpose (it is Twisted's namespace):
    # ship the plugin file as data of the "twisted" package, like Daphne does.
    packages=find_packages(include=["gateway", "gateway.*", "listeners", "listeners.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/udpgateway.py"]},
    install_requires=[
        "twisted>=24.11",   # IPv6 listenMulticast
        "asgiref>=3.6",
        "netifaces-plus>=0.12",  # `import netifaces`, with wheels for current Pythons
        "pyyaml>=6",
        "prometheus-client>=0.20",  # the /metrics endpoint: pure Python, no dependencies of its own
    ],
    extras_require={
        "redis": ["channels-redis>=4.3,<4.4", "redis>=5", "hiredis>=3.2"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "channels>=4.2",
            "django>=4.2",
            "channels-redis>=4.3,<4.4",
            "redis>=5",
            "hiredis>=3.2",  # replies parsed in C straight into futures (gateway/layers/wire.py)
            "dnslib>=0.9.24",
            "zeroconf>=0.130",
            "async-upnp-client>=0.44",
            "hypothesis>=6.100",  # property-based robustness tests (tests/test_properties.py)
        ],
    },
    entry_points={"console_scripts": ["udpgateway = gateway.cli:entry"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
