"""Partitions by user: the layout of a partitioned data directory, the router."""
