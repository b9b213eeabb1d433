-- Every statement the services run. Blocks are named `-- name: NAME` and optionally tagged
-- with a dialect (`-- name: NAME [mysql]` / `[manticore]`), the untagged one serving both.
-- Values are always bound parameters (%(name)s); {placeholders} expand to column lists from
-- common/schema.py at load time. Every SELECT has an explicit ORDER BY (with ASC/DESC) and
-- LIMIT <= 1000 (Manticore returns 20 rows without LIMIT and at most 1,000 with one).

-- name: server_version [mysql]
SELECT VERSION() AS version

-- name: server_version [manticore]
-- The core daemon parses this (SHOW VARIABLES WHERE ... needs the Buddy sidecar).
SELECT VERSION()

-- name: show_tables
SHOW TABLES

-- name: describe_table [mysql]
SHOW COLUMNS FROM {table}

-- name: describe_table [manticore]
DESCRIBE {table}

-- ---------------------------------------------------------------- tasks (bisect)
-- name: insert_task
INSERT INTO bisect ({bisect_columns}) VALUES ({bisect_values})

-- name: tasks_by_ids
SELECT {bisect_columns} FROM bisect WHERE id IN %(ids)s ORDER BY id ASC LIMIT 1000

-- Every row about these jobs, whoever wrote it (compass-ci's rows have random ids and no
-- error_key): the writer dedups on the exact (bad_job_id, error_id) in Python.
-- name: tasks_of_bad_jobs
SELECT {bisect_columns} FROM bisect WHERE bad_job_id IN %(bad_job_ids)s AND id > %(after)s
ORDER BY id ASC LIMIT 1000

-- name: task_list
-- The WHERE clause is assembled from TaskFilter's fixed fragments (values still bound);
-- newest first, paged by the key (created_at, id).
SELECT {bisect_columns} FROM bisect {where} ORDER BY created_at DESC, id DESC LIMIT %(limit)s

-- compass-ci's list: newest id first, its four columns (status filter optional).
-- name: legacy_task_list
SELECT id, bad_job_id, error_id, bisect_status FROM bisect ORDER BY id DESC LIMIT %(limit)s

-- name: legacy_task_list_by_status
SELECT id, bad_job_id, error_id, bisect_status FROM bisect WHERE bisect_status = %(status)s
ORDER BY id DESC LIMIT %(limit)s

-- Rows nobody completed for bisect-task yet (compass-ci's own service writes no error_key).
-- name: foreign_rows_created_since
SELECT id, bad_job_id, error_id, bisect_status, created_at, updated_at FROM bisect
WHERE error_key = '' AND created_at >= %(since)s ORDER BY created_at DESC LIMIT 100

-- name: foreign_rows_updated_since
SELECT id, bad_job_id, error_id, bisect_status, created_at, updated_at FROM bisect
WHERE error_key = '' AND updated_at >= %(since)s ORDER BY updated_at DESC LIMIT 100

-- name: task_ids_by_status
SELECT id FROM bisect WHERE bisect_status = %(status)s AND id > %(after)s ORDER BY id ASC LIMIT %(limit)s

-- name: tasks_by_status_page
SELECT {bisect_columns} FROM bisect WHERE bisect_status = %(status)s AND id > %(after)s
ORDER BY id ASC LIMIT %(limit)s

-- name: claimable_tasks
SELECT {bisect_columns} FROM bisect WHERE bisect_status = 'wait' AND tester IN %(testers)s
ORDER BY priority_level DESC, queued_ms ASC, id ASC LIMIT %(limit)s

-- name: count_by_status
SELECT bisect_status, COUNT(*) AS n FROM bisect GROUP BY bisect_status ORDER BY bisect_status ASC LIMIT 100

-- name: count_tasks
SELECT COUNT(*) AS n FROM bisect

-- name: update_task_claimed
UPDATE bisect SET bisect_status = 'processing', owner = %(owner)s, lease_expires_ms = %(lease_expires_ms)s,
 claims = %(claims)s, start_time = %(start_time)s, updated_at = %(now)s, last_error = '',
 cancel_requested = 0, current_step = 0, steps_estimate = 0, candidates_left = 0,
 current_commit = '', phase = ''
WHERE id = %(id)s

-- name: update_task_leases
UPDATE bisect SET lease_expires_ms = %(lease_expires_ms)s WHERE id IN %(ids)s

-- name: update_task_requeued
UPDATE bisect SET bisect_status = 'wait', owner = '', lease_expires_ms = 0, attempts = %(attempts)s,
 retry_count = %(retry_count)s, queued_ms = %(queued_ms)s, last_error = %(last_error)s, updated_at = %(now)s,
 cancel_requested = 0, end_reason = ''
WHERE id = %(id)s

-- name: update_task_failed
UPDATE bisect SET bisect_status = 'failed', end_reason = '', owner = '', lease_expires_ms = 0,
 attempts = %(attempts)s, last_error = %(last_error)s, end_time = %(now)s, updated_at = %(now)s
WHERE id = %(id)s

-- compass-ci knows four statuses: a cancelled task is `failed`, the reason beside it.
-- name: update_task_cancelled
UPDATE bisect SET bisect_status = 'failed', end_reason = 'cancelled', owner = '', lease_expires_ms = 0,
 cancel_requested = 1, last_error = %(last_error)s, end_time = %(now)s, updated_at = %(now)s
WHERE id = %(id)s

-- name: update_task_cancel_requested
UPDATE bisect SET cancel_requested = 1, updated_at = %(now)s WHERE id = %(id)s

-- name: update_task_completed
UPDATE bisect SET bisect_status = 'completed', owner = '', lease_expires_ms = 0, bad_commit = %(bad_commit)s,
 first_bad_id = %(first_bad_id)s, first_result_root = %(first_result_root)s, work_dir = %(work_dir)s,
 confidence = %(confidence)s, verification = %(verification)s, end_time = %(now)s, updated_at = %(now)s,
 last_error = '', j = %(j)s
WHERE id = %(id)s

-- A row compass-ci's service wrote, completed from its bad job before its first claim.
-- name: update_task_origin
UPDATE bisect SET tester = %(tester)s, git_url = %(git_url)s, project = %(project)s,
 suite = %(suite)s, known_bad_commit = %(known_bad_commit)s, name = %(name)s,
 error_key = %(error_key)s, group_key = %(group_key)s, source = %(source)s, j = %(j)s
WHERE id = %(id)s

-- name: update_task_extra
UPDATE bisect SET j = %(j)s WHERE id = %(id)s

-- name: update_task_testing
UPDATE bisect SET current_commit = %(current_commit)s, phase = %(phase)s, progress_ms = %(progress_ms)s
WHERE id = %(id)s

-- name: update_task_progress
UPDATE bisect SET current_step = %(current_step)s, steps_estimate = %(steps_estimate)s,
 candidates_left = %(candidates_left)s, progress_ms = %(progress_ms)s
WHERE id = %(id)s

-- name: delete_tasks
DELETE FROM bisect WHERE id IN %(ids)s

-- ---------------------------------------------------------------- steps and verdicts
-- name: replace_step
REPLACE INTO bisect_step ({bisect_step_columns}) VALUES ({bisect_step_values})

-- name: steps_of_task
SELECT {bisect_step_columns} FROM bisect_step WHERE task_id = %(task_id)s AND id > %(after)s
ORDER BY id ASC LIMIT 1000

-- name: step_ids_of_tasks
SELECT id FROM bisect_step WHERE task_id IN %(task_ids)s ORDER BY id ASC LIMIT 1000

-- name: delete_steps
DELETE FROM bisect_step WHERE id IN %(ids)s

-- name: replace_verdict
REPLACE INTO bisect_verdict ({bisect_verdict_columns}) VALUES ({bisect_verdict_values})

-- Stored verdicts of an error id (any repository and tester): the caller keeps the exact
-- matches (Manticore's string = ignores case) and deletes them by id.
-- name: verdicts_of_error
SELECT id, repo_url, error_id FROM bisect_verdict WHERE error_id = %(error_id)s AND id > %(after)s
ORDER BY id ASC LIMIT 1000

-- name: delete_verdicts
DELETE FROM bisect_verdict WHERE id IN %(ids)s

-- name: verdicts_in_scope
SELECT {bisect_verdict_columns} FROM bisect_verdict WHERE scope_key = %(scope_key)s AND id > %(after)s
ORDER BY id ASC LIMIT %(limit)s

-- ---------------------------------------------------------------- regression (compass-ci's)
-- compass-ci's whitelist read is `record_type = 'errid' AND valid = 'true'` (string = ignores
-- case on Manticore; the repository applies the same rule on MariaDB).
-- name: regression_whitelist_page
SELECT id, errid, valid FROM regression WHERE record_type = 'errid' AND id > %(after)s
ORDER BY id ASC LIMIT %(limit)s

-- name: regression_by_errid
SELECT {regression_columns} FROM regression WHERE record_type = 'errid' AND errid = %(errid)s
ORDER BY id ASC LIMIT 100

-- name: insert_regression
INSERT INTO regression ({regression_columns}) VALUES ({regression_values})

-- The table is columnar: UPDATE cannot change its counters, so the whole row is rewritten.
-- name: replace_regression
REPLACE INTO regression ({regression_columns}) VALUES ({regression_values})

-- ---------------------------------------------------------------- culprits (bisect-task's)
-- name: replace_culprit
REPLACE INTO bisect_culprit ({bisect_culprit_columns}) VALUES ({bisect_culprit_values})

-- name: culprits_by_errid_key
SELECT {bisect_culprit_columns} FROM bisect_culprit WHERE errid_key = %(errid_key)s
ORDER BY id ASC LIMIT 1000

-- ---------------------------------------------------------------- jobs (compass-ci's)
-- compass-ci's scheduler owns this table: nothing here writes it except `insert_job`, which
-- development, tests and the demo use to stand in for the scheduler.
-- name: insert_job
INSERT INTO jobs ({jobs_columns}) VALUES ({jobs_values})

-- name: replace_job
REPLACE INTO jobs ({jobs_columns}) VALUES ({jobs_values})

-- name: job_by_id
SELECT {job_read_columns} FROM jobs WHERE id = %(id)s ORDER BY id ASC LIMIT 1

-- name: jobs_by_ids
SELECT {job_read_columns} FROM jobs WHERE id IN %(ids)s ORDER BY id ASC LIMIT 1000

-- Discovery: finished jobs (istage 9) with complete data (idata_readiness 3) whose health is
-- one the site bisects, that carry error ids and a repository, and that no bisection submitted.
-- name: discovery_jobs_after [manticore]
SELECT {job_read_columns} FROM jobs
WHERE MATCH(%(match)s) AND id > %(after)s AND istage = 9 AND idata_readiness = 3
 AND ihealth IN %(healths)s AND j.errid IS NOT NULL AND j.bad_job_id IS NULL
 AND (j.program.makepkg._url IS NOT NULL OR j.ss IS NOT NULL OR j.upstream_url IS NOT NULL)
ORDER BY id ASC LIMIT %(limit)s

-- name: discovery_jobs_after [mysql]
SELECT {job_read_columns} FROM jobs
WHERE id > %(after)s AND istage = 9 AND idata_readiness = 3 AND ihealth IN %(healths)s
 AND JSON_EXTRACT(j, '$.errid') IS NOT NULL AND JSON_EXTRACT(j, '$.bad_job_id') IS NULL
 AND (JSON_EXTRACT(j, '$.program.makepkg._url') IS NOT NULL OR JSON_EXTRACT(j, '$.ss') IS NOT NULL
      OR JSON_EXTRACT(j, '$.upstream_url') IS NOT NULL)
ORDER BY id ASC LIMIT %(limit)s

-- The first job whose final row is not written yet (still running, or stats not in).
-- name: first_unsettled_job_after
SELECT id FROM jobs WHERE id > %(after)s AND submit_time >= %(horizon)s
 AND (istage < 9 OR idata_readiness < 3)
ORDER BY id ASC LIMIT 1

-- Reuse: finished jobs of the suite that tested a commit (the caller compares the rest).
-- name: finished_jobs_at_token [manticore]
SELECT {job_read_columns} FROM jobs WHERE MATCH(%(match)s) AND suite = %(suite)s AND istage = 9
 AND idata_readiness = 3
ORDER BY id DESC LIMIT 100

-- name: finished_jobs_at_makepkg_commit [manticore]
SELECT {job_read_columns} FROM jobs WHERE suite = %(suite)s AND istage = 9 AND idata_readiness = 3
 AND j.program.makepkg.commit = %(commit)s
ORDER BY id DESC LIMIT 100

-- name: finished_jobs_at_upstream_commit [manticore]
SELECT {job_read_columns} FROM jobs WHERE suite = %(suite)s AND istage = 9 AND idata_readiness = 3
 AND j.upstream_commit = %(commit)s
ORDER BY id DESC LIMIT 100

-- name: finished_jobs_at_path [mysql]
SELECT {job_read_columns} FROM jobs WHERE suite = %(suite)s AND istage = 9 AND idata_readiness = 3
 AND JSON_UNQUOTE(JSON_EXTRACT(j, %(path)s)) = %(commit)s
ORDER BY id DESC LIMIT 100

-- name: max_job_id
SELECT id FROM jobs ORDER BY id DESC LIMIT 1

-- ---------------------------------------------------------------- service state
-- name: state_by_id
SELECT {bisect_service_state_columns} FROM bisect_service_state WHERE id = %(id)s ORDER BY id ASC LIMIT 1

-- name: insert_state
INSERT INTO bisect_service_state ({bisect_service_state_columns}) VALUES ({bisect_service_state_values})

-- name: update_state
UPDATE bisect_service_state SET value = %(value)s, owner = %(owner)s, updated_ms = %(updated_ms)s WHERE id = %(id)s
