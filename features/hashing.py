"""The stable hash of categorical values into buckets (`rankers convert table`, hashed columns).

A value is hashed as its text: the UTF-8 bytes of the value as written in a CSV file, and for
integers and booleans in parquet their decimal text (`pyarrow`'s cast to string), so `123` in a
parquet column and `123` in a CSV field land in the same bucket. For bytes `b_0 .. b_{L-1}`::

    h = L
    for b in bytes: h = (h * 0x100000001B3 + b + 1) mod 2**64        # a polynomial over the bytes
    h ^= h >> 33; h *= 0xFF51AFD7ED558CCD; h ^= h >> 33                # MurmurHash3's fmix64,
    h *= 0xC4CEB93FE53EC9B3; h ^= h >> 33                              # every product mod 2**64
    id = 2 + h mod N                                                   # N buckets; 0: missing

It involves no salt and no state: the same value has the same id in every process, on every
machine, in convert and in predict. `stable_hash(pa.array([b"abc"]))` is 0x5EB5F99608383FF1 (a
test holds it). The loop above is computed for every value of a column at once with numpy
(powers of the multiplier per byte, summed per value), so no Python loop runs over values.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MULTIPLIER = 0x100000001B3
_FMIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB93FE53EC9B3))
_S33 = np.uint64(33)


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`values` as binary text: strings and binary as they are, integers and booleans as their
    decimal text. ValueError for other types (a float's text is not what a CSV field holds)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if pa.types.is_dictionary(t):
        values, t = values.dictionary_decode(), t.value_type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return values
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return values.cast(pa.large_binary() if pa.types.is_large_string(t) else pa.binary())
    if pa.types.is_integer(t) or pa.types.is_boolean(t):
        return values.cast(pa.string()).cast(pa.binary())
    raise ValueError(f"values of type {t}: expected text, integers or booleans")


def stable_hash(values: pa.Array) -> np.ndarray:
    """The uint64 hash (module doc) of every value of a binary array; nulls hash as empty values
    (callers give them the missing id)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    large = pa.types.is_large_binary(values.type)
    bufs = values.buffers()
    stored = np.frombuffer(bufs[1], np.int64 if large else np.int32)
    offsets: np.ndarray = stored[values.offset : values.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    start, end = offsets[:-1], offsets[1:]
    lengths: np.ndarray = end - start
    span = data[offsets[0] : offsets[-1]]
    longest = int(lengths.max())
    powers = np.ones(longest + 1, dtype=np.uint64)  # MULTIPLIER ** k mod 2**64
    with np.errstate(over="ignore"):
        for k in range(1, longest + 1):
            powers[k] = powers[k - 1] * np.uint64(MULTIPLIER)
        # byte j of a value with e bytes after it contributes (b + 1) * M**e
        after = np.repeat(end - offsets[0], lengths) - 1 - np.arange(len(span), dtype=np.int64)
        terms = (span.astype(np.uint64) + np.uint64(1)) * powers[after]
        sums = np.concatenate(([np.uint64(0)], np.cumsum(terms, dtype=np.uint64)))
        h = sums[end - offsets[0]] - sums[start - offsets[0]]
        h = h + lengths.astype(np.uint64) * powers[lengths]  # the initial h = L, times M**L
        h ^= h >> _S33
        h *= _FMIX[0]
        h ^= h >> _S33
        h *= _FMIX[1]
        h ^= h >> _S33
    return h


def bucket_ids(values: pa.Array, buckets: int, missing: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ids 2 + hash mod `buckets` of every value, `missing` where null; the uint64 hashes of
    the distinct non-null values). Each distinct value is hashed once."""
    enc = pc.dictionary_encode(as_text(values))
    full = stable_hash(enc.dictionary)
    lut = np.empty(len(full) + 1, dtype=np.int64)
    lut[:-1] = (full % np.uint64(buckets)).astype(np.int64) + 2
    lut[-1] = missing
    ids = lut[pc.fill_null(enc.indices, len(full)).to_numpy()]
    return ids, full


class DistinctHashes:
    """The distinct uint64 hashes added so far (8 bytes each): batches are kept aside and merged
    once they outnumber the merged ones, so each hash is sorted O(log) times."""

    def __init__(self) -> None:
        self.merged = np.zeros(0, dtype=np.uint64)
        self.pending: list[np.ndarray] = []

    def add(self, hashes: np.ndarray) -> None:
        self.pending.append(hashes)
        if sum(len(p) for p in self.pending) >= max(1 << 18, len(self.merged)):
            self.merged = self.values()
            self.pending = []

    def values(self) -> np.ndarray:
        """Every distinct hash added, sorted."""
        return np.unique(np.concatenate([self.merged, *self.pending]))

    def collisions(self, buckets: int) -> dict[str, int]:
        """Distinct values (by hash), buckets used, and values in a bucket shared with another."""
        distinct = self.values()
        per_bucket = np.bincount((distinct % np.uint64(buckets)).astype(np.int64), minlength=buckets)
        return {
            "buckets": buckets,
            "distinct_values": len(distinct),
            "buckets_used": int((per_bucket > 0).sum()),
            "values_in_shared_buckets": int(per_bucket[per_bucket > 1].sum()),
        }
