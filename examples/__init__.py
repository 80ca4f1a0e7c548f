"""Example applications for udpgateway's example configs."""
