-- Retention: the settings in one table, unfinished rows expired, finished rows purged, and a
-- purged job that never comes back. 20261205120100 schedules it where pg_cron exists;
-- elsewhere `coursegen purge` runs it (README, "Retention").
--
-- public.job_status_retention, one row: the settings both the scheduled job and
-- `coursegen purge` read, changed with a plain UPDATE (Supabase Studio's table editor, psql),
-- never by a migration again. A table rather than arguments in the cron command: the CLI and
-- the schedule cannot drift apart, changing a horizon needs neither cron's functions nor a
-- new migration, and a database without pg_cron has the same settings:
--   keep_finished   '30 days'  finished rows are deleted this long after they finished
--   expire_after    '7 days'   a row unfinished with no news (no write) this long is ended:
--                              keep it above the longest a job may legitimately wait in
--                              silence (a message's delay, a retry's backoff, a queue's backlog)
--   keep_tombstones '30 days'  a purged job's tombstone is kept this long
--   batch_size      5000       rows per statement (each run of the schedule does one batch of
--                              each kind; `coursegen purge` loops until none is left)
--
-- Expiry: public.job_status_expire(expire_after, max_rows) ends each such row `failed`,
-- error_type 'Expired', error_message 'expired: no news for 7 days', through
-- public.job_status_write like any other event (the row's attempt, progress, progress message,
-- start and identity; no result). Its event_at is the time of the expiry (now()): the verdict
-- is an outcome that happened then, and THE RULE does the rest. A real outcome that happened
-- BEFORE it (a `completed` held in an outbox during an outage, delivered late) is the earlier
-- terminal event and replaces it; one that happens AFTER it (a job that sat in a queue for
-- longer than expire_after, then ran) is stale, as any outcome after a first one: a producer
-- or a browser that saw `failed` is not surprised later. A later event_at (say 2200-01-01, to
-- let any real outcome win) would also set finished_at, and the row could never be purged.
-- Rows are taken FOR UPDATE SKIP LOCKED, their silence checked under the lock: news that
-- arrives meanwhile waits for the expiry to commit, then meets a terminal row.
--
-- Purge: public.job_status_purge(older_than, max_rows) deletes finished rows as before and
-- leaves a tombstone (job_id, purged_at) for each, in the same transaction. Its deletes are not
-- broadcast: the user changed nothing, and a batch of 5,000 messages would count against the
-- project's Realtime quota (100 messages/s on the free plan; Realtime drops what goes over,
-- live jobs' messages included). The function sets job_status.purging for its own duration,
-- and the delete trigger's WHEN skips the statement; any other delete is still broadcast.
--
-- No resurrection: job_status_write inserts no row for a job with a tombstone, and reports such
-- an event `stale` (not rejected: the writer dead-letters rejected events, and a purged job's
-- late events are old news, not data to repair). The probe is on the insert's path only: an
-- event that updates an existing row never reads the tombstones. The insert also skips a job
-- whose row its snapshot still holds: a purge that deleted that row after the snapshot was
-- taken has a tombstone the statement cannot see, and inserting would bring the job back; the
-- event is then looked at again by the next statement, which sees the tombstone (stale) or
-- no row (inserted as before). public.job_status_purge_tombstones(older_than, max_rows) drops
-- tombstones older than keep_tombstones: a late event up to keep_finished + keep_tombstones
-- after a job finished is stale; one later still would create a row again, which expiry and
-- the purge end and remove in their turn (no row stays forever).
--
-- public.job_status_retention_run() is what the schedule calls: one batch of each (expire,
-- purge, tombstones) with the table's settings, in one transaction; it answers with the counts.
--
-- Cost (benchmarks/README.md, "Retention"; backend CPU per event, 20,000 events in batches of
-- 400, median of 9 rounds, two runs, before -> after): a `completed` event on a pending row (an
-- update) is unchanged, 5.13 -> 5.00 and 6.21 -> 6.22 us on PostgreSQL 15 (updates never read
-- the tombstones); a `pending` event of a new job (an insert) pays the two probes, 15.19 ->
-- 16.11 and 17.07 -> 18.05 us, and +2.6 to +3.0 us with 100,000 tombstones (PostgreSQL 18:
-- +0.2 to +0.8, +2.3 to +3.5). One purge batch of 5,000 rows: 47.8 -> 23.9 ms of backend CPU
-- (5,000 tombstones instead of 5,000 Broadcast messages).

create table public.job_status_retention (
  id boolean primary key default true check (id),  -- one row
  keep_finished interval not null default '30 days' check (keep_finished >= interval '0'),
  expire_after interval not null default '7 days' check (expire_after > interval '0'),
  keep_tombstones interval not null default '30 days' check (keep_tombstones >= interval '0'),
  batch_size integer not null default 5000 check (batch_size between 1 and 100000),
  updated_at timestamptz not null default now()
);
insert into public.job_status_retention default values;
alter table public.job_status_retention enable row level security;
revoke all on public.job_status_retention from public, anon, authenticated;
grant select, update on public.job_status_retention to service_role;
comment on table public.job_status_retention is
  'Retention settings (one row), read by job_status_retention_run (the pg_cron job) and by '
  '`coursegen purge`: change them with UPDATE.';

-- job_status_write (20261205081000) already holds the two probes on its insert's path and
-- the outcome of an event for a purged job (stale), over job_status_tombstones (created there).

-- The purge's deletes are not broadcast (the trigger's WHEN; job_status_purge sets the flag for
-- its own duration). Statement-level: the condition is evaluated once per statement.
drop trigger job_status_broadcast_delete on public.job_status;
create trigger job_status_broadcast_delete
  after delete on public.job_status
  referencing old table as old_rows
  for each statement
  when (pg_catalog.current_setting('job_status.purging', true) is distinct from 'on')
  execute function public.job_status_broadcast();

-- Deletes finished rows (terminal, finished before now() - older_than), at most max_rows per
-- call, oldest first, leaving a tombstone for each; call it again until it returns less than
-- max_rows. Its deletes are not broadcast.
create or replace function public.job_status_purge(older_than interval, max_rows integer default 5000)
returns integer
language sql
security invoker
set search_path = ''
set job_status.purging = 'on'
as $$
  with doomed as (
    select j.id
    from public.job_status as j
    where j.created_at < pg_catalog.now() - older_than  -- the indexed bound
      and j.status >= 'cancelled'::public.job_state
      and j.finished_at < pg_catalog.now() - older_than
    order by j.created_at
    limit greatest(max_rows, 0)
    for update skip locked
  ),
  gone as (
    delete from public.job_status as j using doomed as d where j.id = d.id returning j.job_id
  ),
  buried as (
    insert into public.job_status_tombstones as t (job_id)
    select g.job_id from gone as g
    order by g.job_id
    on conflict (job_id) do update set purged_at = excluded.purged_at
    returning 1
  )
  select pg_catalog.count(*)::integer from buried
$$;

-- Drops tombstones older than older_than, at most max_rows per call.
create function public.job_status_purge_tombstones(older_than interval, max_rows integer default 5000)
returns integer
language sql
security invoker
set search_path = ''
as $$
  with doomed as (
    select t.job_id
    from public.job_status_tombstones as t
    where t.purged_at < pg_catalog.now() - older_than
    order by t.purged_at
    limit greatest(max_rows, 0)
    for update skip locked
  ),
  gone as (
    delete from public.job_status_tombstones as t using doomed as d where t.job_id = d.job_id
    returning 1
  )
  select pg_catalog.count(*)::integer from gone
$$;

-- Ends unfinished rows without news (no write) for expire_after: `failed`, error_type
-- 'Expired', at most max_rows per call, oldest first, through job_status_write with the time
-- of the expiry as the event's time (see the header). Returns how many it ended.
create function public.job_status_expire(expire_after interval, max_rows integer default 5000)
returns integer
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_now constant double precision := extract(epoch from pg_catalog.now())::double precision;
  v_message text;
  v_job_ids text[];
  v_n integer;
  v_answer jsonb;
  v_attempts integer[];
  v_tenant_ids uuid[];
  v_user_ids uuid[];
  v_actor_names text[];
  v_queue_names text[];
  v_progresses smallint[];
  v_progress_messages text[];
  v_enqueued_ats double precision[];
  v_started_ats double precision[];
begin
  if expire_after is null or expire_after <= interval '0' then
    raise exception 'job_status_expire: expire_after must be a positive interval, not %', expire_after
      using errcode = '22023';
  end if;
  v_message := 'expired: no news for ' || expire_after::text;
  select
    pg_catalog.array_agg(j.job_id order by j.job_id), pg_catalog.array_agg(j.attempt order by j.job_id),
    pg_catalog.array_agg(j.tenant_id order by j.job_id), pg_catalog.array_agg(j.user_id order by j.job_id),
    pg_catalog.array_agg(j.actor_name order by j.job_id), pg_catalog.array_agg(j.queue_name order by j.job_id),
    pg_catalog.array_agg(j.progress order by j.job_id),
    pg_catalog.array_agg(j.progress_message order by j.job_id),
    pg_catalog.array_agg(extract(epoch from j.enqueued_at)::double precision order by j.job_id),
    pg_catalog.array_agg(extract(epoch from j.started_at)::double precision order by j.job_id)
  into
    v_job_ids, v_attempts, v_tenant_ids, v_user_ids, v_actor_names, v_queue_names, v_progresses,
    v_progress_messages, v_enqueued_ats, v_started_ats
  from (
    select j.job_id, j.attempt, j.tenant_id, j.user_id, j.actor_name, j.queue_name, j.progress,
           j.progress_message, j.enqueued_at, j.started_at
    from public.job_status as j
    where j.created_at < pg_catalog.now() - expire_after  -- the indexed bound
      and j.status < 'cancelled'::public.job_state
      and j.updated_at < pg_catalog.now() - expire_after
    order by j.created_at
    limit greatest(max_rows, 0)
    for update skip locked
  ) as j;
  v_n := coalesce(pg_catalog.cardinality(v_job_ids), 0);
  if v_n = 0 then
    return 0;
  end if;
  v_answer := public.job_status_write(
    v_job_ids,
    pg_catalog.array_fill('failed'::public.job_state, array[v_n]),
    v_attempts, v_tenant_ids, v_user_ids, v_actor_names, v_queue_names,
    pg_catalog.array_fill(v_now, array[v_n]),
    v_progresses,
    v_progress_messages,
    null,
    pg_catalog.array_fill('Expired'::text, array[v_n]),
    pg_catalog.array_fill(v_message, array[v_n]),
    null,
    v_enqueued_ats,
    v_started_ats
  );
  return (v_answer ->> 'applied')::integer;
end
$$;

-- One batch of each, with the settings of public.job_status_retention: what the schedule runs.
create function public.job_status_retention_run()
returns jsonb
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_settings public.job_status_retention;
  v_expired integer;
  v_purged integer;
  v_dropped integer;
begin
  select * into v_settings from public.job_status_retention where id;
  if not found then
    raise exception 'job_status_retention_run: public.job_status_retention has no row'
      using errcode = '55000';
  end if;
  v_expired := public.job_status_expire(v_settings.expire_after, v_settings.batch_size);
  v_purged := public.job_status_purge(v_settings.keep_finished, v_settings.batch_size);
  v_dropped := public.job_status_purge_tombstones(v_settings.keep_tombstones, v_settings.batch_size);
  return pg_catalog.jsonb_build_object(
    'expired', v_expired, 'purged', v_purged, 'tombstones_dropped', v_dropped
  );
end
$$;

revoke all on function public.job_status_purge(interval, integer) from public, anon, authenticated;
revoke all on function public.job_status_purge_tombstones(interval, integer) from public, anon, authenticated;
revoke all on function public.job_status_expire(interval, integer) from public, anon, authenticated;
revoke all on function public.job_status_retention_run() from public, anon, authenticated;
grant execute on function public.job_status_purge(interval, integer) to service_role;
grant execute on function public.job_status_purge_tombstones(interval, integer) to service_role;
grant execute on function public.job_status_expire(interval, integer) to service_role;
grant execute on function public.job_status_retention_run() to service_role;
