"""The Clerk event types orgsync handles, and how an event type names its table and action.

Light on purpose (the standard library only): the webhook receiver needs this to decide whether an
event waits in the inbox for the apply layer or is stored as ignored, and must not pull the apply
layer (pandas, pandera) in to learn it.
"""

from enum import StrEnum


class EventFamily(StrEnum):
    """The part of a Clerk event type before the dot: which kind of object the event is about."""

    ORGANIZATION = "organization"
    USER = "user"
    MEMBERSHIP = "organizationMembership"


class EventAction(StrEnum):
    """The part of a Clerk event type after the dot."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


HANDLED_EVENTS = frozenset(f"{family}.{action}" for family in EventFamily for action in EventAction)


def is_handled(event_type: str) -> bool:
    """Whether orgsync applies events of ``event_type`` (the others are stored as ignored)."""
    return event_type in HANDLED_EVENTS


def split_event_type(event_type: str) -> tuple[EventFamily, EventAction]:
    """The family and action of a handled event type, e.g. ``user.deleted``; ValueError for others."""
    family, _, action = event_type.rpartition(".")
    return EventFamily(family), EventAction(action)
