"""Names both ends of the Replay service agree on, beside the messages in `protos/distrl/v1/replay.proto`.

The shard (`server`), the actors' writer and the learner's client import these
from here, so a writer does not pull in the shard, its checkpoints and Zarr.
"""

from __future__ import annotations

from distrl.proto.v1 import replay_pb2

# The gRPC service, also the name its health status is reported under.
SERVICE_NAME = replay_pb2.DESCRIPTOR.services_by_name["Replay"].full_name
# The table a request with an empty table name means.
DEFAULT_TABLE = "default"
# Trailing-metadata key carrying the name of the field that got a batch rejected.
REJECTED_FIELD_KEY = "distrl-rejected-field"
