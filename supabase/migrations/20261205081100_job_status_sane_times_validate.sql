-- Validates the time constraint that 20261205081000 added NOT VALID, in a transaction of its
-- own so that the scan runs under a SHARE UPDATE EXCLUSIVE lock: reads and status writes go on
-- while it reads the table (only other DDL, and vacuum, wait for it).
--
-- Rows written before the constraints may hold a time outside [2000-01-01, 2200-01-01]: the
-- functions before them accepted '-Infinity'. Such a time is clamped to the nearest bound,
-- which keeps the row where it was in the ordering (an -infinity event_at sorted before every
-- other time; 2000-01-01 sorts before every time an event may now carry). The update touches
-- only those rows; on a large table the cost is one sequential scan for the update and one for
-- the validation.

update public.job_status set
  event_at = case when event_at is not null then
    greatest(least(event_at, '2200-01-01 00:00:00+00'), '2000-01-01 00:00:00+00') end,
  enqueued_at = case when enqueued_at is not null then
    greatest(least(enqueued_at, '2200-01-01 00:00:00+00'), '2000-01-01 00:00:00+00') end,
  started_at = case when started_at is not null then
    greatest(least(started_at, '2200-01-01 00:00:00+00'), '2000-01-01 00:00:00+00') end,
  next_retry_at = case when next_retry_at is not null then
    greatest(least(next_retry_at, '2200-01-01 00:00:00+00'), '2000-01-01 00:00:00+00') end,
  finished_at = case when finished_at is not null then
    greatest(least(finished_at, '2200-01-01 00:00:00+00'), '2000-01-01 00:00:00+00') end
where not (event_at >= '2000-01-01 00:00:00+00' and event_at <= '2200-01-01 00:00:00+00')
   or not (enqueued_at >= '2000-01-01 00:00:00+00' and enqueued_at <= '2200-01-01 00:00:00+00')
   or not (started_at >= '2000-01-01 00:00:00+00' and started_at <= '2200-01-01 00:00:00+00')
   or not (next_retry_at >= '2000-01-01 00:00:00+00' and next_retry_at <= '2200-01-01 00:00:00+00')
   or not (finished_at >= '2000-01-01 00:00:00+00' and finished_at <= '2200-01-01 00:00:00+00');

alter table public.job_status validate constraint job_status_times_check;
