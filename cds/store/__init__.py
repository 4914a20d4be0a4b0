"""Decision records: the audit trail of every hook call, the clinicians' feedback on the
cards, acknowledgements (alert suppression) and the token ids already used.

SQLite in the data directory by default (WAL mode, created and migrated at start-up);
PostgreSQL in production (`CRS_DATABASE_URL=postgresql+psycopg://…`, migrated with
`crs-cds db upgrade`). Access is synchronous SQLAlchemy Core, run in worker threads.
"""
