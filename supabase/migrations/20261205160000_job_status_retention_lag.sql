-- How far behind retention is: what an operator watches to learn that the schedule stopped
-- (pg_cron job unscheduled, a run failing every time, nobody running `coursegen purge`).
--
-- public.job_status_retention_lag() answers in seconds, 0 when nothing is overdue, the larger of
--   (a) how long past its purge time (finished_at + keep_finished) the finished row the purge
--       would take next is: job_status_purge's `doomed` query with LIMIT 1;
--   (b) how long past its expiry (updated_at + expire_after, no news) the unfinished row the
--       expiry would take next is: job_status_expire's query with LIMIT 1;
-- with the settings of public.job_status_retention. "Next" is the retention's own order,
-- oldest created first, as both functions take rows: a row created later may have finished
-- (or gone quiet) earlier, so the answer can fall short of the worst row's by at most the
-- reported row's own life (created -> finished, created -> last write), never more. While the
-- schedule is stopped the answer grows by a second a second, which is what the alert reads
-- (monitoring/prometheus/alerts.yml, JobStatusRetentionBehind).
--
-- Cost. Both queries walk job_status_created_at_idx from its oldest entry and stop at the first
-- row that is due, as the purge and the expiry do. (a) is index-driven: the rows created before
-- now() - keep_finished are the ones the purge deletes, so on a table retention keeps up with
-- the walk is short (rows finished after the horizon but created before it: jobs that waited or
-- ran that long). (b) has no usable index: `status` and `updated_at` are written by every
-- status write, and an index on either (or a partial index whose predicate reads them) would
-- end the heap-only updates 20261129040000 gave the writes. The created_at bound is the
-- cheapest correct one: on a table retention keeps up with it reads every row created before
-- now() - expire_after (the finished rows kept for keep_finished: with the defaults about
-- 23/30 of the table) and finds none due. That is the read job_status_expire itself makes every
-- run; the fleet asks at most once a minute (middleware/cancel_poll.py). Figures on 100,000
-- rows: tests/integration/test_retention_lag.py and README, "Retention".
--
-- Read-only (stable): PostgREST runs it in a read-only transaction; it locks nothing.

create function public.job_status_retention_lag()
returns double precision
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  v_settings public.job_status_retention;
  v_purge_before timestamptz;
  v_expire_before timestamptz;
  v_purge_lag interval;
  v_expire_lag interval;
begin
  select * into v_settings from public.job_status_retention where id;
  if not found then
    raise exception 'job_status_retention_lag: public.job_status_retention has no row'
      using errcode = '55000';
  end if;
  v_purge_before := pg_catalog.now() - v_settings.keep_finished;
  v_expire_before := pg_catalog.now() - v_settings.expire_after;

  -- (a) job_status_purge's doomed query, the next row only
  select v_purge_before - j.finished_at into v_purge_lag
  from public.job_status as j
  where j.created_at < v_purge_before  -- the indexed bound
    and j.status >= 'cancelled'::public.job_state
    and j.finished_at < v_purge_before
  order by j.created_at
  limit 1;

  -- (b) job_status_expire's query, the next row only
  select v_expire_before - j.updated_at into v_expire_lag
  from public.job_status as j
  where j.created_at < v_expire_before  -- the indexed bound
    and j.status < 'cancelled'::public.job_state
    and j.updated_at < v_expire_before
  order by j.created_at
  limit 1;

  -- GREATEST is syntax, not a function (it ignores nulls: a kind with no row due counts 0)
  return greatest(
    0::double precision,
    extract(epoch from v_purge_lag)::double precision,
    extract(epoch from v_expire_lag)::double precision
  );
end
$$;

revoke all on function public.job_status_retention_lag() from public, anon, authenticated;
grant execute on function public.job_status_retention_lag() to service_role;
