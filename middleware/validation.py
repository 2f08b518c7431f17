"""PayloadValidation: check a message's payload against the model its actor declares.

An actor opts in with ``@dramatiq.actor(payload_model=SomePydanticModel)``. The payload is the
single positional argument (or, with none, the keyword arguments). At ``send()`` an invalid
payload raises :class:`~middleware.errors.InvalidPayloadError` (a ``MiddlewareError``: Dramatiq
lets it through and enqueues nothing). A message that slips past (an old producer, a hand-made
message) fails when a worker picks it up, with the same error, and is never retried: the class
is added to the actor's ``throws``.

:func:`middleware.install` adds it, after the status middleware.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from dramatiq import Actor, Broker, Message, Middleware
from dramatiq.errors import ActorNotFound
from dramatiq.worker import ConsumerThread
from pydantic import TypeAdapter, ValidationError

from .errors import InvalidPayloadError

logger = logging.getLogger(__name__)


def add_throws(actor: Actor[Any, Any], exception: type[BaseException]) -> None:
    """Add ``exception`` to the actor's ``throws`` (the exceptions ``Retries`` never retries)."""
    throws = actor.options.get("throws") or ()
    if not isinstance(throws, tuple):
        throws = (throws,)
    if exception not in throws:
        actor.options["throws"] = (*throws, exception)


def _payload(message: Message[Any]) -> Any:
    if len(message.args) == 1 and not message.kwargs:
        return message.args[0]
    if not message.args:
        return dict(message.kwargs)
    return {"args": list(message.args), "kwargs": dict(message.kwargs)}


class PayloadValidation(Middleware):
    """Validates payloads of actors declared with ``payload_model`` (any pydantic model, or
    anything :class:`pydantic.TypeAdapter` accepts)."""

    def __init__(self) -> None:
        self._adapters: dict[str, TypeAdapter[Any] | None] = {}

    @property
    def actor_options(self) -> set[str]:
        return {"payload_model"}

    def after_declare_actor(self, broker: Broker, actor: Actor[Any, Any]) -> None:
        self._adapters.pop(actor.actor_name, None)
        if actor.options.get("payload_model") is not None:
            add_throws(actor, InvalidPayloadError)

    def _adapter(self, broker: Broker, actor_name: str) -> TypeAdapter[Any] | None:
        if actor_name not in self._adapters:
            try:
                model = broker.get_actor(actor_name).options.get("payload_model")
            except ActorNotFound:
                return None
            self._adapters[actor_name] = None if model is None else TypeAdapter(model)
        return self._adapters[actor_name]

    def validate(self, broker: Broker, message: Message[Any]) -> None:
        """Raise :class:`InvalidPayloadError` when the message's payload is invalid."""
        adapter = self._adapter(broker, message.actor_name)
        if adapter is None:
            return
        try:
            adapter.validate_python(_payload(message))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            raise InvalidPayloadError(message.actor_name, [dict(e) for e in errors]) from None

    # -- hooks, in lifecycle order --------------------------------------------------------

    def before_enqueue(self, broker: Broker, message: Message[Any], delay: int | None) -> None:
        if "retries" in message.options or isinstance(threading.current_thread(), ConsumerThread):
            # a retry copy, or a delayed message a consumer moves back to its queue (Dramatiq
            # 2.2 drops its "eta" first): checked when sent, and again when processed; raising
            # here would break the consumer thread, not refuse a send
            return
        self.validate(broker, message)

    def before_process_message(self, broker: Broker, message: Message[Any]) -> None:
        try:
            self.validate(broker, message)
        except InvalidPayloadError:
            logger.warning(
                "Message %s has an invalid payload; it fails without retries.",
                message.message_id,
                extra={"action": "invalid_payload", "job_id": message.message_id},
            )
            raise
