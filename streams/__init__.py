"""Everything that touches Kafka and disk: topics, worker, executors, timers, client, CLI, local broker."""
