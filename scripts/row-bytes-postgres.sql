DROP TABLE IF EXISTS rs_old; DROP TABLE IF EXISTS rs_new;
CREATE TABLE rs_old (id BYTEA PRIMARY KEY, key_text TEXT NOT NULL, token BYTEA NOT NULL, fingerprint BYTEA NOT NULL, completed BOOLEAN NOT NULL, lease_until TIMESTAMPTZ, expires_at TIMESTAMPTZ NOT NULL, output BYTEA);
CREATE TABLE rs_new (id BYTEA PRIMARY KEY, token BYTEA NOT NULL, fingerprint BYTEA NOT NULL, completed BOOLEAN NOT NULL, lease_until TIMESTAMPTZ, expires_at TIMESTAMPTZ NOT NULL, output BYTEA);
INSERT INTO rs_old SELECT sha256(('k'||g)::bytea), 'shop::orders::create:1:' || encode(sha256(('m'||g)::bytea),'hex'), substr(sha256(('t'||g)::bytea),1,16), sha256(('f'||g)::bytea), TRUE, NULL, now() + interval '1 day', substr(sha256(('o'||g)::bytea),1,14) FROM generate_series(1,100000) g;
CREATE INDEX ON rs_old (expires_at); CREATE INDEX ON rs_new (expires_at);
INSERT INTO rs_new SELECT id, token, fingerprint, completed, lease_until, expires_at, output FROM rs_old;
VACUUM ANALYZE rs_old; VACUUM ANALYZE rs_new;
SELECT 'old' t, avg(pg_column_size(r.*))::int row_bytes, pg_relation_size('rs_old') heap, pg_total_relation_size('rs_old') total FROM rs_old r
UNION ALL SELECT 'new', avg(pg_column_size(r.*))::int, pg_relation_size('rs_new'), pg_total_relation_size('rs_new') FROM rs_new r;
DROP TABLE rs_old; DROP TABLE rs_new;
