"""Everything that talks to or adapts Kafka clients and brokers (see ARCHITECTURE.md)."""
