"""The SQL the guard must refuse, each with a word its reason must contain.

Shared by the guard's own tests (``tests/unit/test_guard.py``, no database) and the
end-to-end ones (``tests/test_sql.py``, which aim each case at a real table and check that
nothing changed). The cases write against a table ``t``; a case added here is checked in
both places.
"""

from __future__ import annotations

import pytest

REJECTED = [
    # statements other than a query, each named in the reason
    pytest.param("INSERT INTO t VALUES (1)", "INSERT", id="insert"),
    pytest.param("UPDATE t SET a = 1", "UPDATE", id="update"),
    pytest.param("DELETE FROM t", "DELETE", id="delete"),
    pytest.param("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE", "MERGE", id="merge"),
    pytest.param("TRUNCATE flights", "TRUNCATE", id="truncate"),
    pytest.param("DROP TABLE flights", "DROP", id="drop"),
    pytest.param("CREATE TABLE x AS SELECT 1", "CREATE", id="create-table-as"),
    pytest.param("ALTER TABLE t ADD COLUMN c int", "ALTER", id="alter"),
    pytest.param("GRANT SELECT ON t TO public", "GRANT", id="grant"),
    pytest.param("COPY (SELECT 1) TO '/tmp/x'", "COPY", id="copy"),
    pytest.param("COPY t FROM PROGRAM 'id'", "COPY", id="copy-from-program"),
    pytest.param("VACUUM FULL", "VACUUM", id="vacuum"),
    pytest.param("ANALYZE flights", "ANALYZE", id="analyze"),
    pytest.param("DO $$ BEGIN DELETE FROM t; END $$", "DO", id="do-block"),
    pytest.param("EXPLAIN ANALYZE DELETE FROM t", "EXPLAIN", id="explain-analyze"),
    pytest.param("PREPARE p AS DELETE FROM t", "PREPARE", id="prepare"),
    pytest.param("EXECUTE p", "EXECUTE", id="execute"),
    pytest.param("SET default_transaction_read_only = off", "SET", id="set"),
    pytest.param("RESET ALL", "RESET", id="reset"),
    pytest.param("LISTEN channel", "LISTEN", id="listen"),
    pytest.param("NOTIFY channel, 'x'", "NOTIFY", id="notify"),
    pytest.param("BEGIN READ WRITE", "BEGIN", id="begin"),
    pytest.param("COMMIT", "COMMIT", id="commit"),
    pytest.param("CALL do_things()", "CALL", id="call"),
    pytest.param("LOCK TABLE flights IN ACCESS EXCLUSIVE MODE", "LOCK", id="lock"),
    pytest.param("CHECKPOINT", "CHECKPOINT", id="checkpoint"),
    pytest.param("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT", id="with-insert"),
    # writes hidden inside a query
    pytest.param(
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "data-modifying CTE",
        id="cte-delete",
    ),
    pytest.param(
        "WITH i AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM i",
        "data-modifying CTE",
        id="cte-insert",
    ),
    pytest.param(
        "WITH u AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM u",
        "data-modifying CTE",
        id="cte-update",
    ),
    pytest.param(
        "WITH a AS (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) SELECT * FROM a",
        "data-modifying CTE",
        id="nested-cte-delete",
    ),
    pytest.param("SELECT * INTO copy_of_t FROM t", "SELECT INTO", id="select-into"),
    pytest.param("SELECT 1 INTO TEMP x", "SELECT INTO", id="select-into-temp"),
    pytest.param("SELECT * FROM t FOR UPDATE", "FOR UPDATE", id="for-update"),
    pytest.param("SELECT * FROM t FOR SHARE OF t SKIP LOCKED", "FOR SHARE", id="for-share"),
    pytest.param("SELECT * FROM t FOR NO KEY UPDATE", "FOR NO KEY UPDATE", id="for-no-key-update"),
    pytest.param("SELECT * FROM t FOR KEY SHARE", "FOR KEY SHARE", id="for-key-share"),
    pytest.param(
        "SELECT * FROM (SELECT * FROM t FOR UPDATE) s", "FOR UPDATE", id="for-update-in-subquery"
    ),
    # more than one statement
    pytest.param("SELECT 1; SELECT 2", "more than one statement", id="two-selects"),
    pytest.param("SELECT 1; DROP TABLE t", "more than one statement", id="select-then-drop"),
    pytest.param(
        "SELECT 1; -- just a comment\nDELETE FROM t",
        "more than one statement",
        id="statement-after-comment",
    ),
    pytest.param("/* SELECT */ DELETE FROM t", "DELETE", id="statement-behind-leading-comment"),
    # refused functions, in every position
    pytest.param("SELECT pg_read_file('/etc/passwd')", "pg_read_file", id="fn-select-list"),
    pytest.param("SELECT 1 WHERE pg_read_file('/x') <> ''", "pg_read_file", id="fn-where"),
    pytest.param("SELECT * FROM pg_ls_dir('.')", "pg_ls_dir", id="fn-table-function"),
    pytest.param("SELECT * FROM ROWS FROM (pg_ls_dir('.'))", "pg_ls_dir", id="fn-rows-from"),
    pytest.param(
        "SELECT * FROM t WHERE a IN (SELECT pg_read_file('/x'))", "pg_read_file", id="fn-subquery"
    ),
    pytest.param(
        "WITH c AS (SELECT pg_read_file('/x') AS f) SELECT * FROM c", "pg_read_file", id="fn-cte"
    ),
    pytest.param("SELECT length(upper(pg_read_file('/x')))", "pg_read_file", id="fn-argument"),
    pytest.param("SELECT pg_catalog.pg_read_file('/x')", "pg_read_file", id="fn-schema-qualified"),
    pytest.param("SELECT \"pg_read_file\"('/x')", "pg_read_file", id="fn-quoted"),
    pytest.param("SELECT PG_READ_FILE('/x')", "PG_READ_FILE", id="fn-upper-case"),
    pytest.param("SELECT pg_read_file /* hi */ ('/x')", "pg_read_file", id="fn-comment-before-("),
    pytest.param(
        "SELECT * FROM t LEFT JOIN LATERAL pg_ls_dir(t.path) d ON true",
        "pg_ls_dir",
        id="fn-lateral",
    ),
    pytest.param("SELECT pg_sleep(100)", "pg_sleep", id="pg-sleep"),
    pytest.param("SELECT pg_sleep_for('1 hour')", "pg_sleep_for", id="pg-sleep-for"),
    pytest.param("SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)", "dblink", id="dblink"),
    pytest.param("SELECT dblink_exec('host=x', 'DROP TABLE t')", "dblink_exec", id="dblink-exec"),
    pytest.param("SELECT lo_import('/etc/passwd')", "lo_import", id="lo-import"),
    pytest.param("SELECT lo_export(1, '/tmp/x')", "lo_export", id="lo-export"),
    pytest.param(
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "set_config",
        id="set-config",
    ),
    pytest.param("SELECT nextval('flights_id_seq')", "nextval", id="nextval"),
    pytest.param("SELECT setval('s', 1)", "setval", id="setval"),
    pytest.param("SELECT txid_current()", "txid_current", id="txid-current"),
    pytest.param("SELECT pg_current_xact_id()", "pg_current_xact_id", id="pg-current-xact-id"),
    pytest.param(
        "SELECT query_to_xml('DELETE FROM t RETURNING 1', true, true, '')",
        "query_to_xml",
        id="query-to-xml",
    ),
    pytest.param("SELECT ts_stat('SELECT v FROM t')", "ts_stat", id="ts-stat-runs-sql"),
    pytest.param("SELECT pg_advisory_lock(1)", "pg_advisory_lock", id="pg-advisory-lock"),
    pytest.param(
        "SELECT pg_try_advisory_xact_lock(1)", "pg_try_advisory_xact_lock", id="pg-try-advisory"
    ),
    pytest.param(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_user_tables",
        "pg_terminate_backend",
        id="pg-terminate-backend",
    ),
    pytest.param("SELECT pg_cancel_backend(1)", "pg_cancel_backend", id="pg-cancel-backend"),
    pytest.param("SELECT pg_reload_conf()", "pg_reload_conf", id="pg-reload-conf"),
    pytest.param("SELECT pg_notify('c', 'x')", "pg_notify", id="pg-notify"),
    pytest.param(
        "SELECT * FROM pg_stat_get_activity(NULL)", "pg_stat_get_activity", id="fn-activity"
    ),
    # views that show other sessions
    pytest.param("SELECT query FROM pg_stat_activity", "pg_stat_activity", id="pg-stat-activity"),
    pytest.param(
        "SELECT * FROM pg_catalog.pg_stat_activity a",
        "pg_stat_activity",
        id="pg-stat-activity-qualified",
    ),
    pytest.param(
        'SELECT * FROM "pg_stat_activity"', "pg_stat_activity", id="pg-stat-activity-quoted"
    ),
    pytest.param("TABLE pg_stat_activity", "pg_stat_activity", id="table-pg-stat-activity"),
    pytest.param(
        "SELECT * FROM t JOIN pg_locks l ON l.relation = t.oid", "pg_locks", id="pg-locks-joined"
    ),
    pytest.param("SELECT * FROM pg_stat_statements", "pg_stat_statements", id="pg-stat-statements"),
    pytest.param("SELECT rolpassword FROM pg_authid", "pg_authid", id="pg-authid"),
    pytest.param(
        "SELECT * FROM pg_stat_progress_vacuum", "pg_stat_progress", id="pg-stat-progress"
    ),
    # nothing to run, or unreadable
    pytest.param("", "empty", id="empty"),
    pytest.param("   \n\t ", "empty", id="whitespace-only"),
    pytest.param("-- only a comment", "empty", id="only-a-comment"),
    pytest.param(" ; ;", "empty", id="only-semicolons"),
    pytest.param("SELECT FROM WHERE", "line 1", id="parse-error-has-a-position"),
    pytest.param("SELECT 'unterminated", "could not read", id="unterminated-string"),
    # spellings that PostgreSQL reads differently from sqlglot
    pytest.param(
        "SELECT .5e$$ , pg_read_file('/x') -- $$", "put a space", id="dollar-after-number"
    ),
    pytest.param(
        "SELECT 0b$$ , pg_read_file('/x') -- $$", "'$' right after a word", id="dollar-after-word"
    ),
    pytest.param("SELECT 1x, 2", "runs into", id="number-runs-into-word"),
    pytest.param("SELECT U&\"pg\\0072ead_file\"('/x')", "Unicode-escaped", id="unicode-identifier"),
    pytest.param("SELECT pg_read_file\x00('/x')", "control character", id="nul-byte"),
    pytest.param("SELECT pg_read_file\x0c('/x')", "U+000C", id="form-feed"),
    pytest.param(
        "SELECT 1 /* /* */ -- */ , pg_read_file('/x')", "pg_read_file", id="nested-comment-trick"
    ),
    pytest.param("SELECT 1 := 2", "assignments", id="assignment"),
]

# MySQL's and MariaDB's own write, file and wait paths (the guard parses these as MySQL).
MYSQL_REJECTED = [
    pytest.param("SELECT * FROM t INTO OUTFILE '/tmp/x'", "OUTFILE", id="into-outfile"),
    pytest.param("SELECT a INTO DUMPFILE '/tmp/x' FROM t", "DUMPFILE", id="into-dumpfile"),
    pytest.param("SELECT a INTO @v FROM t", "INTO", id="into-variable"),
    pytest.param("SELECT LOAD_FILE('/etc/passwd')", "LOAD_FILE", id="load-file"),
    pytest.param("LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "LOAD", id="load-data"),
    pytest.param("SELECT SLEEP(5)", "SLEEP", id="sleep"),
    pytest.param("SELECT BENCHMARK(100000000, MD5('a'))", "BENCHMARK", id="benchmark"),
    pytest.param("SELECT GET_LOCK('x', 10)", "GET_LOCK", id="get-lock"),
    pytest.param("SELECT MASTER_GTID_WAIT('0-1-100')", "MASTER_GTID_WAIT", id="gtid-wait"),
    pytest.param("SELECT @a := 1", "assignments", id="user-variable-assignment"),
    pytest.param("SET @a = 1", "SET", id="set-user-variable"),
    pytest.param("HANDLER t OPEN", "HANDLER", id="handler"),
    pytest.param("DO SLEEP(1)", "DO", id="do"),
    pytest.param("SELECT * FROM t FOR UPDATE", "FOR UPDATE", id="for-update"),
    pytest.param("SELECT * FROM t LOCK IN SHARE MODE", "FOR SHARE", id="lock-in-share-mode"),
    pytest.param("SELECT 1 /*! , LOAD_FILE('/etc/passwd') */", "executable", id="exec-comment"),
    pytest.param("SELECT * FROM information_schema.processlist", "processlist", id="processlist"),
    pytest.param("REPLACE INTO t VALUES (1)", "REPLACE", id="replace"),
    pytest.param("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 2", "INSERT", id="upsert"),
    pytest.param("DELETE FROM t", "DELETE", id="delete"),
    pytest.param("SELECT 1; DROP TABLE t", "more than one", id="stacked"),
]
