"""The private store's index: every record shared by the processes using one store (entries and
their present ranges, locks, claims, transfers, evictions, owners), behind one interface.

A distribution of its own (`wtfs-index`), installed by both the wtfs client and the Girder
server plugin, so that neither copies the other's queries.
"""
