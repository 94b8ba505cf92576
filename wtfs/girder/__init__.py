"""The Girder side of the client: the REST client, raw http downloads, the metadata cache."""
