"""What ``claudemesh-gateway check`` reports for a bot that answers getMe: privacy mode in bound
groups, the webhook Telegram has on record, and bound chats the bot cannot see or whose topics
are not a forum's."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from claudemesh_gateway import Binding
from claudemesh_gateway.plugins.telegram.config import TelegramConfig, bound_thread, coerce_options
from claudemesh_gateway.plugins.telegram.egress import chat_id, is_group
from claudemesh_gateway.plugins.telegram.transport import raw_call
from claudemesh_gateway.plugins.telegram.wire import Chat, User, WebhookInfo
from pydantic import ValidationError
from telegram import Bot
from telegram.error import BadRequest, Forbidden, TelegramError

__all__ = ["problems"]


async def problems(bot: Bot, me: User, config: TelegramConfig, bindings: Sequence[Binding],
                   webhook_url: str | None, scrub: Callable[[str], str]) -> list[str]:
    """The problems found (a getWebhookInfo or getChat that fails for a transient reason is skipped)."""
    found: list[str] = []
    group_bindings = [b for b in bindings if b.inbound and is_group(b.address.chat)]
    if group_bindings and not me.can_read_all_group_messages:
        found.append(
            f"privacy mode is on for @{me.username}: in groups it only sees commands "
            f"and replies to itself. Disable it (@BotFather /setprivacy -> Disable, then re-add the bot) "
            f"or make the bot an admin of: " + ", ".join(sorted({b.address.chat for b in group_bindings})))
    try:
        info = WebhookInfo.model_validate((await bot.get_webhook_info()).to_dict())
    except TelegramError:
        info = None
    if info is not None:
        if config.mode == "polling" and info.url:
            found.append("a webhook is set for this bot; polling mode deletes it "
                            "at start (another deployment using it will stop receiving updates)")
        if config.mode == "webhook":
            if not webhook_url:
                found.append("mode = \"webhook\" without public_url here or in [server]: start() refuses")
            if webhook_url and not webhook_url.startswith("https://"):
                found.append("public_url must be https:// for Telegram webhooks")
            if info.url and info.url != webhook_url:
                found.append("the webhook points elsewhere; start() re-registers it")
            if info.last_error_message:
                found.append(f"Telegram's last webhook error: "
                                f"{scrub(info.last_error_message)}")
    for chat in sorted({b.address.chat for b in bindings}):
        try:
            c = Chat.model_validate(await raw_call(bot, "getChat", chat_id=chat_id(chat)))
        except (BadRequest, Forbidden):
            found.append(f"chat {chat} not found or the bot is not a member")
            continue
        except (TelegramError, ValidationError):
            continue
        threaded = [b for b in bindings if b.address.chat == chat and
                    bound_thread(b.address.thread, coerce_options(b.options))]
        if threaded and not c.is_forum:
            found.append(f"chat {chat} has topics bound but is not a forum")
    return found
