"""Steady's topics and their creation.

All share one partition count, so that a run's records on every topic land on the same partition number and
one worker owns them together.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Settings

logger = logging.getLogger(__name__)

_WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of Steady's topics under one prefix."""

    inbox: str
    state: str
    history: str
    tasks: str
    completions: str
    dead_letter: str
    timers: str

    @classmethod
    def named(cls, prefix: str) -> Topics:
        """The topics under ``prefix`` (default ``steady.``)."""
        return cls(
            inbox=f"{prefix}inbox",
            state=f"{prefix}state",
            history=f"{prefix}history",
            tasks=f"{prefix}tasks",
            completions=f"{prefix}completions",
            dead_letter=f"{prefix}dead-letter",
            timers=f"{prefix}timers",
        )

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic-level settings of each topic."""
        return {
            self.inbox: {"cleanup.policy": "delete"},
            self.state: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
            self.history: {"cleanup.policy": "delete", "retention.ms": str(4 * 52 * _WEEK_MS)},
            self.tasks: {"cleanup.policy": "delete"},
            self.completions: {"cleanup.policy": "delete", "retention.ms": str(52 * _WEEK_MS)},
            self.dead_letter: {"cleanup.policy": "delete", "retention.ms": str(52 * _WEEK_MS)},
            # The timer service's input is its own changelog: live timers stay, fired ones are tombstoned.
            self.timers: {"cleanup.policy": "compact", "min.compaction.lag.ms": "0", "delete.retention.ms": "3600000"},
        }


async def ensure_topics(settings: Settings) -> Topics:
    """Create Steady's topics if they are missing, and check that they are co-partitioned."""
    topics = Topics.named(settings.prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, settings.partitions, settings.replication, topic_configs=config)
            for name, config in topics.configs().items()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker or client was quicker
                await admin.create_topics(missing)
            logger.info("created topics %s", ", ".join(t.name for t in missing))
        described = await admin.describe_topics([topics.inbox, topics.state, topics.tasks, topics.timers])
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"Steady's topics must have one partition count, found {counts}")
    finally:
        await admin.close()
    return topics
