"""The mounted tree: sessions, Girder objects as nodes, POSIX names."""
