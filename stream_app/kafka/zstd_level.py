"""Private aiokafka internals: ``aiokafka.codec.zstd_encode`` as the record builders call it, in
``aiokafka.record.default_records`` and ``aiokafka.record._crecords.default_records`` (checked
against aiokafka 0.14.0; tests/test_internals.py fails when they are gone).

zstd record batches at level 1, for every producer in this process.

aiokafka compresses zstd record batches at zstd's default level, 3, and has no setting for the
level. Result rows are JSON objects that repeat the same 33 keys, which zstd's fastest level
already finds: on 4.6 MB of the stream's rows (cramjam 2.14, this 2-core machine) level 1 ran at
554 MB/s with a ratio of 8.2, level 3 at 254 MB/s with a ratio of 6.8. The worker compresses on
its event loop, so level 3 spent about 0.5 s more of the worker's one core per 200,000 rows
(``bench_stream.py --pack --modes live``, three alternating runs each: zstd level 1 20.7k-21.3k
obs/s, level 3 16.4k-19.7k, uncompressed 17.6k-20.4k).

:func:`install` replaces the ``zstd_encode`` that aiokafka's record batch builders call (its
Cython builder and its pure-Python fallback) with the same function at a fixed level. Reading is
unchanged: a zstd frame says nothing of the level it was written at.
"""

from __future__ import annotations

import functools

import aiokafka.codec
import aiokafka.record.default_records

ZSTD_LEVEL = 1

try:  # the Cython builder aiokafka uses when its extensions are built (the usual case)
    from aiokafka.record._crecords import default_records as _cython_records
except ImportError:  # pragma: no cover - aiokafka without its extensions
    _cython_records = None


def install(level: int = ZSTD_LEVEL) -> None:
    """Idempotent; a later call with another level replaces the earlier one."""
    encode = functools.partial(aiokafka.codec.zstd_encode, level=level)
    for module in (aiokafka.record.default_records, _cython_records):
        if module is not None:
            module.zstd_encode = encode
