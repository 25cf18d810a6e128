DROP TABLE IF EXISTS rs_old; DROP TABLE IF EXISTS rs_new;
CREATE TABLE rs_old (id BINARY(32) NOT NULL PRIMARY KEY, key_text MEDIUMTEXT NOT NULL, token BINARY(16) NOT NULL, fingerprint BINARY(32) NOT NULL, completed BOOLEAN NOT NULL, lease_until DATETIME(6) NULL, expires_at DATETIME(6) NOT NULL, output LONGBLOB NULL, INDEX (expires_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE rs_new (id BINARY(32) NOT NULL PRIMARY KEY, token BINARY(16) NOT NULL, fingerprint BINARY(32) NOT NULL, completed BOOLEAN NOT NULL, lease_until DATETIME(6) NULL, expires_at DATETIME(6) NOT NULL, output LONGBLOB NULL, INDEX (expires_at)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO rs_old SELECT UNHEX(SHA2(CONCAT('k',seq),256)), CONCAT('shop::orders::create:1:', SHA2(CONCAT('m',seq),256)), LEFT(UNHEX(SHA2(CONCAT('t',seq),256)),16), UNHEX(SHA2(CONCAT('f',seq),256)), TRUE, NULL, UTC_TIMESTAMP(6) + INTERVAL 1 DAY, LEFT(UNHEX(SHA2(CONCAT('o',seq),256)),14) FROM seq_1_to_100000;
INSERT INTO rs_new SELECT id, token, fingerprint, completed, lease_until, expires_at, output FROM rs_old;
ANALYZE TABLE rs_old, rs_new;
SELECT table_name, data_length, index_length, data_length+index_length total, ROUND(100000/((data_length+index_length)/1e6)) rows_per_mb FROM information_schema.tables WHERE table_schema=DATABASE() AND table_name IN ('rs_old','rs_new');
DROP TABLE rs_old; DROP TABLE rs_new;
