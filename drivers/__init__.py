"""I/O drivers that bind the sans-IO core to real sockets.

Each driver only reads bytes, feeds them with ``now``, writes what comes out,
delivers messages to the application and arms ONE timer for the earliest
deadline of all its connections (docs/theory.md). Everything else is in the core.
"""
