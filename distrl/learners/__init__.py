"""Learners: replay batches in, algorithm updates, versioned weights out, checkpoints."""
