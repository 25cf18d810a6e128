#!/usr/bin/env bash
# Bytes per idempotency row before (with 0.1's `key_text` column) and after (without), on the
# loopback PostgreSQL, MariaDB and an SQLite file: 100,000 completed records of a 14-byte output,
# the same values in both tables, the tables' own indexes included. Writes only its scratch
# tables (rs_old, rs_new; dropped at the end) and /tmp files.
set -euo pipefail
cd "$(dirname "$0")"
echo "== PostgreSQL: average pg_column_size of a row, heap and total bytes"
psql -h 127.0.0.1 -U postgres -d test -q -f row-bytes-postgres.sql 2>/dev/null
echo "== MariaDB: data and index bytes, rows per MB"
mysql -h 127.0.0.1 -u root test < row-bytes-mysql.sql
echo "== SQLite: file bytes after VACUUM, rows per MB"
python3 - <<'PY'
import hashlib, os, sqlite3
for name, key_text in (("old", True), ("new", False)):
    path = f"/tmp/idempotency-row-bytes-{name}.sqlite"
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    columns = "id BLOB PRIMARY KEY NOT NULL, " + ("key_text TEXT NOT NULL, " if key_text else "")
    columns += "token BLOB NOT NULL, fingerprint BLOB NOT NULL, completed INTEGER NOT NULL, "
    columns += "lease_until INTEGER, expires_at INTEGER NOT NULL, output BLOB"
    db.execute(f"CREATE TABLE t ({columns})")
    db.execute("CREATE INDEX t_expires_at ON t (expires_at)")
    rows = []
    for n in range(100_000):
        h = lambda tag: hashlib.sha256(f"{tag}{n}".encode()).digest()
        row = [h("k")] + (["shop::orders::create:1:" + h("m").hex()] if key_text else [])
        rows.append(row + [h("t")[:16], h("f"), 1, None, 1795434931530000, h("o")[:14]])
    db.executemany(f"INSERT INTO t VALUES ({','.join('?' * len(rows[0]))})", rows)
    db.commit()
    db.execute("VACUUM")
    db.close()
    size = os.path.getsize(path)
    os.remove(path)
    print(f"{name}: {size} bytes, {round(100_000 / (size / 1e6))} rows per MB")
PY
