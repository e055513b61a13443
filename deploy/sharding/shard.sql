-- What a shard has beyond the product's schema (`fieldlog-backend migrate`), applied by
-- `scripts/shards init` after migrate and after map.sql: `CALL fl_shard_setup(K)` on shard K.
-- Re-runnable (also after a later `migrate` added a table).
--
-- 1. Every device table (a base table with a `device_id` column) gets an invisible column
--    `shard_no SMALLINT UNSIGNED NOT NULL DEFAULT K`: the ingest's INSERTs name their columns, so
--    every row written on shard K says K without the ingest knowing. The Spider front end
--    partitions its tables by it (LIST, one partition per shard), so the front end never decides
--    where a device is: a read goes to every shard, each answers from its own rows, and moving a
--    device never touches the front end. Invisible: `SELECT *` and column-less INSERTs do not see
--    it. Adding it is an instant ALTER (no table copy) on MariaDB 10.4+.
-- 2. Auto-increment ids (`dead_letters.id`, `command_responses.id`) start at K * 2^40 on shard K,
--    so ids are unique across shards (a move copies rows without their ids: they get new ones
--    from the target's range).
-- 3. `shard_self` says which shard this is.

DELIMITER //

CREATE OR REPLACE PROCEDURE fl_shard_setup(IN k SMALLINT UNSIGNED)
  MODIFIES SQL DATA
BEGIN
  DECLARE done INT DEFAULT 0;
  DECLARE t VARCHAR(64);
  DECLARE device_tables CURSOR FOR
    SELECT c.TABLE_NAME FROM information_schema.COLUMNS c
      JOIN information_schema.TABLES x ON x.TABLE_SCHEMA = c.TABLE_SCHEMA AND x.TABLE_NAME = c.TABLE_NAME
     WHERE c.TABLE_SCHEMA = DATABASE() AND c.COLUMN_NAME = 'device_id' AND x.TABLE_TYPE = 'BASE TABLE'
       AND c.TABLE_NAME NOT LIKE 'shard\_%';
  DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1;
  IF k < 1 OR k > 999 THEN
    SIGNAL SQLSTATE 'FL004' SET MESSAGE_TEXT = 'fieldlog: a shard number is 1…999';
  END IF;
  INSERT INTO shard_self (id, shard) VALUES (1, k) ON DUPLICATE KEY UPDATE shard = k;
  OPEN device_tables;
  walk: LOOP
    FETCH device_tables INTO t;
    IF done THEN LEAVE walk; END IF;
    -- ADD COLUMN IF NOT EXISTS does not change an existing column: set its default explicitly.
    SET @fl_sql = CONCAT('ALTER TABLE `', t, '` ADD COLUMN IF NOT EXISTS shard_no SMALLINT UNSIGNED NOT NULL DEFAULT ', k, ' INVISIBLE');
    PREPARE s FROM @fl_sql; EXECUTE s; DEALLOCATE PREPARE s;
    SET @fl_sql = CONCAT('ALTER TABLE `', t, '` ALTER COLUMN shard_no SET DEFAULT ', k);
    PREPARE s FROM @fl_sql; EXECUTE s; DEALLOCATE PREPARE s;
  END LOOP;
  CLOSE device_tables;
  -- ids from K * 2^40 (an AUTO_INCREMENT below the largest id is raised to it by InnoDB)
  SET @fl_sql = CONCAT('ALTER TABLE dead_letters AUTO_INCREMENT = ', k * 1099511627776);
  PREPARE s FROM @fl_sql; EXECUTE s; DEALLOCATE PREPARE s;
  SET @fl_sql = CONCAT('ALTER TABLE command_responses AUTO_INCREMENT = ', k * 1099511627776);
  PREPARE s FROM @fl_sql; EXECUTE s; DEALLOCATE PREPARE s;
END //

DELIMITER ;
