"""Telegram gateway plugin: Bot API long polling or webhook, HTML rendering, forum topics, media."""

from claudemesh_gateway import hookimpl
from claudemesh_gateway.plugins.telegram.gateway import TelegramGateway


@hookimpl
def register_gateways(register):
    register(TelegramGateway)
