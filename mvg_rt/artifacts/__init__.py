"""Artifacts: what export writes and the runtime reads (manifest, hashes, profiles, engine compatibility)."""
