-- The shard map (docs/sharding.md): which shard holds each device. Applied by `scripts/shards init`
-- to every shard and to the Spider front end; every copy holds the same map at the same version
-- once a change has been applied everywhere. Re-runnable.
--
-- device -> shard:
--   1. an explicit override (`shard_overrides`), if the device has one: devices moved away from
--      their bucket's shard, devices pinned while their bucket is reassigned, devices being moved;
--   2. else its bucket's shard: bucket = CRC32(device_id) MOD 4096 (CRC-32/IEEE of the id's ASCII
--      bytes, as zlib computes it), `shard_buckets` maps each of the 4096 buckets to a shard.
-- Consistent hashing with fixed buckets: adding a shard reassigns whole buckets to it (about
-- 4096/(N+1), taken evenly from the others); every other device keeps its shard.
--
-- Every change of the map increments `shard_map.version` in the same transaction
-- (`fl_map_begin`). Ingest caches the map with its version and starts every write transaction on
-- a shard with `CALL fl_fence(cached_version)`: a shared lock on the version row, and an error
-- (SQLSTATE 'FL001') when the shard's map is newer. A map change takes the exclusive lock, so it
-- waits for the write transactions in flight on that shard, and none that starts after it can
-- commit with the old map: that is what makes a move safe (docs/sharding.md, "Moving a device").

CREATE TABLE IF NOT EXISTS shard_map (
  id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
  version BIGINT UNSIGNED NOT NULL,
  changed_at DATETIME(3) NOT NULL,
  note VARCHAR(255) NOT NULL,
  CONSTRAINT shard_map_one_row CHECK (id = 1)
) ENGINE=InnoDB;

-- Which shard this server is (0: the front end). Ingest checks it after connecting.
CREATE TABLE IF NOT EXISTS shard_self (
  id TINYINT UNSIGNED NOT NULL PRIMARY KEY,
  shard SMALLINT UNSIGNED NOT NULL,
  CONSTRAINT shard_self_one_row CHECK (id = 1)
) ENGINE=InnoDB;

-- The shards: each a MariaDB server or a Galera cluster, its addresses in failover order.
CREATE TABLE IF NOT EXISTS shard_servers (
  shard SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
  addresses VARCHAR(1024) NOT NULL,
  state ENUM('active','retired') NOT NULL DEFAULT 'active',
  CONSTRAINT shard_servers_number CHECK (shard BETWEEN 1 AND 999)
) ENGINE=InnoDB;

-- The 4096 buckets. `frozen`: being reassigned; a device of it without an override must not be
-- written anywhere until the reassignment is done (only new devices are affected: every
-- existing one is pinned by an override first).
CREATE TABLE IF NOT EXISTS shard_buckets (
  bucket SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
  shard SMALLINT UNSIGNED NOT NULL,
  frozen TINYINT(1) NOT NULL DEFAULT 0,
  CONSTRAINT shard_buckets_range CHECK (bucket < 4096)
) ENGINE=InnoDB;

-- Devices not on their bucket's shard, and devices being moved (`moving_to` set: their rows are
-- still on `shard`; nothing of theirs is written or acked until the move is done or cancelled).
CREATE TABLE IF NOT EXISTS shard_overrides (
  device_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
  shard SMALLINT UNSIGNED NOT NULL,
  moving_to SMALLINT UNSIGNED NULL,
  since DATETIME(3) NOT NULL,
  note VARCHAR(255) NOT NULL DEFAULT ''
) ENGINE=InnoDB;

-- Every version of the map, with what changed.
CREATE TABLE IF NOT EXISTS shard_map_log (
  version BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  at DATETIME(3) NOT NULL,
  note VARCHAR(255) NOT NULL
) ENGINE=InnoDB;

DELIMITER //

-- The bucket of a device id.
CREATE OR REPLACE FUNCTION fl_bucket(d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin)
  RETURNS SMALLINT UNSIGNED DETERMINISTIC
  RETURN CRC32(d) MOD 4096 //

-- The shard that holds a device's rows (while it moves: the source, which still holds them).
CREATE OR REPLACE FUNCTION fl_shard_of(d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin)
  RETURNS SMALLINT UNSIGNED READS SQL DATA
  RETURN COALESCE((SELECT shard FROM shard_overrides WHERE device_id = d),
                  (SELECT shard FROM shard_buckets WHERE bucket = CRC32(d) MOD 4096)) //

-- The first statement of every ingest write transaction on a shard: waits for a map change in
-- progress on this shard, and refuses (SQLSTATE FL001) when the shard's map is newer than the
-- caller's. Reload the map, route the transaction's devices again, retry.
CREATE OR REPLACE PROCEDURE fl_fence(IN cached BIGINT UNSIGNED)
  READS SQL DATA
BEGIN
  DECLARE current BIGINT UNSIGNED DEFAULT NULL;
  DECLARE message VARCHAR(200);
  SELECT version INTO current FROM shard_map WHERE id = 1 LOCK IN SHARE MODE;
  IF current IS NULL THEN
    SIGNAL SQLSTATE 'FL001' SET MESSAGE_TEXT = 'fieldlog: this server has no shard map (scripts/shards init)';
  END IF;
  IF current > cached THEN
    SET message = CONCAT('fieldlog: shard map changed: version ', current, ' here, ', cached, ' cached; reload the map and route again');
    SIGNAL SQLSTATE 'FL001' SET MESSAGE_TEXT = message;
  END IF;
END //

-- Opens a map change on this copy (call inside START TRANSACTION … COMMIT, before the change's
-- statements): locks the version row (waiting for write transactions in flight), refuses a
-- version not above this copy's, and records the new version. `scripts/shards` takes the new
-- version as 1 + the highest of all copies and applies the same change with it everywhere.
CREATE OR REPLACE PROCEDURE fl_map_begin(IN v BIGINT UNSIGNED, IN what VARCHAR(255))
  MODIFIES SQL DATA
BEGIN
  DECLARE current BIGINT UNSIGNED DEFAULT NULL;
  DECLARE message VARCHAR(200);
  SELECT version INTO current FROM shard_map WHERE id = 1 FOR UPDATE;
  IF current IS NOT NULL AND current >= v THEN
    SET message = CONCAT('fieldlog: shard map is at version ', current, ' here, not below ', v, ' (another change ran meanwhile?)');
    SIGNAL SQLSTATE 'FL003' SET MESSAGE_TEXT = message;
  END IF;
  INSERT INTO shard_map (id, version, changed_at, note) VALUES (1, v, NOW(3), what)
    ON DUPLICATE KEY UPDATE version = v, changed_at = NOW(3), note = what;
  INSERT INTO shard_map_log (version, at, note) VALUES (v, NOW(3), what);
END //

-- Map changes (inside a transaction opened by fl_map_begin).
-- Mark a device as moving to `target`: its rows stay where they are; writers stop writing it.
CREATE OR REPLACE PROCEDURE fl_map_mark_moving(IN d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin, IN source SMALLINT UNSIGNED, IN target SMALLINT UNSIGNED)
  MODIFIES SQL DATA
  INSERT INTO shard_overrides (device_id, shard, moving_to, since, note) VALUES (d, source, target, NOW(3), CONCAT('moving ', source, ' -> ', target))
    ON DUPLICATE KEY UPDATE shard = source, moving_to = target, since = NOW(3), note = VALUES(note) //

-- Place a device on `target` (the end of a move, or a pin): an override unless the bucket says so.
CREATE OR REPLACE PROCEDURE fl_map_place(IN d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin, IN target SMALLINT UNSIGNED, IN why VARCHAR(255))
  MODIFIES SQL DATA
BEGIN
  INSERT INTO shard_overrides (device_id, shard, moving_to, since, note) VALUES (d, target, NULL, NOW(3), why)
    ON DUPLICATE KEY UPDATE shard = target, moving_to = NULL, since = NOW(3), note = why;
  DELETE FROM shard_overrides WHERE device_id = d AND moving_to IS NULL
     AND shard = (SELECT b.shard FROM shard_buckets b WHERE b.bucket = CRC32(d) MOD 4096 AND b.frozen = 0);
END //

DELIMITER ;
