"""The terminal surface: the seqstream command, the demo, watch, report (see ARCHITECTURE.md)."""
