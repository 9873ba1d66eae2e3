"""PostgreSQL, the system of record: the connection pool (:mod:`.pool`), schema migrations
(:mod:`.migrate`, SQL files in ``migrations/``), the embedded server of the demo and the tests
(:mod:`.embedded`), and the one place psycopg errors become project errors (:mod:`.errors`).

Migration numbers: 0001-0009 the foundation and job records, 0010-0029 the review queue,
reviewers, outbox and banks. Each file runs once, in its own transaction.
"""
