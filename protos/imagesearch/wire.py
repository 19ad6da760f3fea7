"""Names on the wire that the services and the clients must agree on, defined once."""

from __future__ import annotations

# What a namespace of "" is called in answers (DescribeStats), as Pinecone names it.
DEFAULT_NAMESPACE = "__default__"
# The trailing metadata in which an embed_service replica names itself.
REPLICA_HEADER = "imagesearch-replica"
