"""The shared PostgreSQL database of several pxetwist servers (issue 15): schema and upgrades."""
