"""The workflow model: authoring API and the per-run actor (pure: no Kafka, no disk, no clock)."""
