"""Steady creates its topics with the settings its design relies on, on the broker itself."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.settings import Settings
from streams.topics import INDEX_INTERVAL_BYTES, SCAN_INDEX_INTERVAL_BYTES, Topics, ensure_topics

pytestmark = pytest.mark.integration

TOPIC_LEVEL = 1
"""DescribeConfigs' source of a value set on the topic itself (DYNAMIC_TOPIC_CONFIG), not the broker's default."""


async def test_each_topic_is_created_with_its_cleanup_policy_and_a_sparse_index(settings: Settings) -> None:
    topics = await ensure_topics(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        wanted = Topics.named(settings.prefix).configs()
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted])
    finally:
        await admin.close()
    found: dict[str, dict[str, tuple[str, int]]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            found[name] = {key: (value, source) for key, value, _, source, *_ in entries}
    assert set(found) == set(wanted)
    scanned = {topics.state, topics.history}
    for name, config in wanted.items():
        # Set on the topic, so that it holds on any cluster, whatever its brokers' defaults.
        interval = SCAN_INDEX_INTERVAL_BYTES if name in scanned else INDEX_INTERVAL_BYTES
        assert found[name]["index.interval.bytes"] == (str(interval), TOPIC_LEVEL), name
        assert found[name]["cleanup.policy"] == (config["cleanup.policy"], TOPIC_LEVEL), name
    assert found[topics.state]["cleanup.policy"][0] == "compact"
