"""Actors: step envs with the newest policy and stream transitions to replay."""
