"""The mount daemon: the root nursery and the wiring from config to the parts."""
