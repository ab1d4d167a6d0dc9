"""Avro schemas of every record on every topic, and the codec that reads and writes them."""
