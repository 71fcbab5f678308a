"""Slack gateway plugin: Socket Mode or Events API in, Web API out."""

from claudemesh_gateway import hookimpl
from claudemesh_gateway.plugins.slack.gateway import SlackGateway


@hookimpl
def register_gateways(register):
    register(SlackGateway)
