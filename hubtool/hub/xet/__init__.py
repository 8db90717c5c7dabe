"""Xet storage formats, pure Python (docs/xet.md): the chunker, the hashes, xorbs and shards, as hf_xet writes
them. No server code here; hub serve's CAS builds on these."""
