-- The Spider front end's routines (after map.sql). `scripts/shards init` creates its tables: for
-- every device table of the shards a Spider table partitioned by LIST (shard_no), one partition
-- per shard; the views over them; local InnoDB tables for what is not per device (web users,
-- sessions, activity; schema_migrations); and on every Spider table the triggers below, so a row
-- written through the front end (the web admin's and `replay`'s commands) lands on its device's
-- shard, and nothing of a device that is being moved is written or changed through it.

DELIMITER //

-- The shard a row of device `d` is written to through the front end. A row without a device
-- (a dead letter of a topic that names none) goes to the lowest active shard.
CREATE OR REPLACE FUNCTION fl_write_shard(d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin)
  RETURNS SMALLINT UNSIGNED READS SQL DATA
BEGIN
  DECLARE s SMALLINT UNSIGNED DEFAULT NULL;
  IF d IS NULL THEN
    RETURN (SELECT MIN(shard) FROM shard_servers WHERE state = 'active');
  END IF;
  CALL fl_not_moving(d);
  SET s = fl_shard_of(d);
  IF s IS NULL THEN
    SIGNAL SQLSTATE 'FL005' SET MESSAGE_TEXT = 'fieldlog: the front end has no shard map (scripts/shards init)';
  END IF;
  RETURN s;
END //

-- Refuses (SQLSTATE FL002) while device `d` is being moved between shards.
CREATE OR REPLACE PROCEDURE fl_not_moving(IN d VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin)
  READS SQL DATA
BEGIN
  DECLARE target SMALLINT UNSIGNED DEFAULT NULL;
  DECLARE message VARCHAR(200);
  IF d IS NOT NULL THEN
    SET target = (SELECT moving_to FROM shard_overrides WHERE device_id = d);
    IF target IS NOT NULL THEN
      SET message = CONCAT('fieldlog: device ', d, ' is being moved to shard ', target, '; try again when the move is done');
      SIGNAL SQLSTATE 'FL002' SET MESSAGE_TEXT = message;
    END IF;
  END IF;
END //

DELIMITER ;
