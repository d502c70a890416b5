"""Sizes of the SQL columns that hold what a source record carries: defined once, for the tables and the adapters.

SQLite stores text of any length holding any character; PostgreSQL refuses text longer than its column and text
holding NUL (``\\x00``), which made such a record ``sink_rejected`` on PostgreSQL only. ``sinks.tables`` sizes its
columns with these numbers and the adapters (``streams.adapters.base.column_problem``, the source models) check
records against the same numbers, so a record is accepted or rejected alike whichever database is behind the worker.
"""

from __future__ import annotations

#: ``touchpoints.event_id``: ``derive_event_id`` gives at most 34 characters.
EVENT_ID_MAX = 64
#: ``touchpoints.source_id``: a record's source id (``StoreRecord.source_id``, ``EcommerceRecord.source_id``, ...).
SOURCE_ID_MAX = 256
#: ``touchpoints.issue_id``: the case a contact is about.
ISSUE_ID_MAX = 128
#: ``touchpoints.issue_key``: the issue id, or ``reason:`` + the folded contact reason of a contact without one.
ISSUE_KEY_MAX = 160
#: ``identities.id_value``: an identifier's value (a salted hash of 64 characters for hashed e-mails and phones).
IDENTIFIER_VALUE_MAX = 256
#: ``identities.identifier``: the key ``type:value``; the longest type name (20) + 1 + IDENTIFIER_VALUE_MAX fits.
IDENTIFIER_KEY_MAX = 320
