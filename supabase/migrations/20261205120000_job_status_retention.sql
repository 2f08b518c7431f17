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

create table public.job_status_tombstones (
  job_id text primary key,
  purged_at timestamptz not null default now()
);
create index job_status_tombstones_purged_at_idx on public.job_status_tombstones (purged_at);
alter table public.job_status_tombstones enable row level security;
revoke all on public.job_status_tombstones from public, anon, authenticated;
grant select, insert, update, delete on public.job_status_tombstones to service_role;
comment on table public.job_status_tombstones is
  'Jobs whose rows job_status_purge deleted: job_status_write never inserts them again. '
  'Dropped after job_status_retention.keep_tombstones by job_status_purge_tombstones.';

-- The write of 20261205081000, and two probes on its insert's path (marked below) plus the
-- outcome of an event for a purged job (stale).
create or replace function public.job_status_write(
  job_ids text[],
  statuses public.job_state[],
  attempts integer[],
  tenant_ids uuid[],
  user_ids uuid[],
  actor_names text[],
  queue_names text[],
  event_ats double precision[],  -- epoch seconds, as are the other times
  progresses smallint[] default null,
  progress_messages text[] default null,
  results text[] default null,  -- JSON texts
  error_types text[] default null,
  error_messages text[] default null,
  next_retry_ats double precision[] default null,
  enqueued_ats double precision[] default null,
  started_ats double precision[] default null
)
returns jsonb
language plpgsql
security invoker
set search_path = ''
-- one plan shape whatever the table's size: the events drive a nested loop over the job_id
-- index in job_id order, so concurrent writers lock rows in one order (a hash join would lock
-- them in the table's physical order)
set enable_hashjoin = off
set enable_mergejoin = off
-- planned once per session: the arrays' sizes do not change the plan's shape
set plan_cache_mode = force_generic_plan
as $$
declare
  v_n constant integer := coalesce(pg_catalog.cardinality(job_ids), 0);
  v_todo integer[];              -- the positions of this round's events; null: every event
  v_set integer;                 -- how many events this round has
  v_rounds jsonb := '[]';        -- the rounds still to run, in order (a round: its positions)
  v_round integer := 1;
  v_written integer;             -- rows this round wrote (updated or inserted)
  v_detail jsonb;                -- when it wrote fewer rows than it had events: what it knows
  v_rejected jsonb := '{}';      -- position -> reason
  v_stale integer[] := '{}';     -- positions whose job's row held newer news
  v_missed integer[] := '{}';    -- first events of their job that a round wrote nothing for
  v_jobs_written text[] := '{}'; -- jobs written, when the batch took several rounds
  v_next integer[];
  v_more_missed integer[];
  v_more_stale integer[];
  v_mismatch jsonb;
  v_half integer;
  v_state text;
  v_constraint text;
  v_column text;
  v_message text;
begin
  if (progresses is not null and pg_catalog.cardinality(progresses) <> v_n)
    or (progress_messages is not null and pg_catalog.cardinality(progress_messages) <> v_n)
    or (results is not null and pg_catalog.cardinality(results) <> v_n)
    or (error_types is not null and pg_catalog.cardinality(error_types) <> v_n)
    or (error_messages is not null and pg_catalog.cardinality(error_messages) <> v_n)
    or (next_retry_ats is not null and pg_catalog.cardinality(next_retry_ats) <> v_n)
    or (enqueued_ats is not null and pg_catalog.cardinality(enqueued_ats) <> v_n)
    or (started_ats is not null and pg_catalog.cardinality(started_ats) <> v_n)
    or coalesce(pg_catalog.cardinality(statuses), 0) <> v_n
    or coalesce(pg_catalog.cardinality(attempts), 0) <> v_n
    or coalesce(pg_catalog.cardinality(tenant_ids), 0) <> v_n
    or coalesce(pg_catalog.cardinality(user_ids), 0) <> v_n
    or coalesce(pg_catalog.cardinality(actor_names), 0) <> v_n
    or coalesce(pg_catalog.cardinality(queue_names), 0) <> v_n
    or coalesce(pg_catalog.cardinality(event_ats), 0) <> v_n
  then
    raise exception 'job_status_write expects arrays of one length (one element per event)'
      using errcode = '22023';
  end if;
  if v_n = 0 then
    return '{"events": 0, "applied": 0, "stale": [], "rejected": []}'::jsonb;
  end if;

  v_set := v_n;  -- the first round takes every event; later ones are queued in v_rounds
  loop
    begin
      -- THE WRITE: the one statement that changes job_status
      with ev as materialized (
        -- the round's events, by position, and what is wrong with a time (the table's
        -- constraints check the rest)
        select e.i::integer as i, e.job_id,
          case
            -- each time finite and from 2000-01-01 to 2200-01-01 (epoch seconds), as
            -- the table's job_status_times_check; NaN is greater than any number
            when not (
              least(e.event_at, e.enqueued_at, e.started_at, e.next_retry_at) >= 946684800
              and greatest(e.event_at, e.enqueued_at, e.started_at, e.next_retry_at) <= 7258118400
            ) then case
              when not (e.event_at >= 946684800 and e.event_at <= 7258118400)
                then 'invalid_time: event_at'
              when not (e.enqueued_at >= 946684800 and e.enqueued_at <= 7258118400)
                then 'invalid_time: enqueued_at'
              when not (e.started_at >= 946684800 and e.started_at <= 7258118400)
                then 'invalid_time: started_at'
              else 'invalid_time: next_retry_at'
            end
          end as problem
        -- the form of unnest that zips arrays is only known unqualified; a null array pads
        from unnest(job_ids, event_ats, enqueued_ats, started_ats, next_retry_ats)
          with ordinality as e (job_id, event_at, enqueued_at, started_at, next_retry_at, i)
        where v_todo is null or e.i = any(v_todo)
      ),
      firsts as not materialized (
        -- each job's first event in the round that passes the checks (a later one waits for
        -- the next round, as if it came in the next batch), and what it writes
        select f.i, f.job_id,
          tenant_ids[f.i] as tenant_id,
          user_ids[f.i] as user_id,
          actor_names[f.i] as actor_name,
          queue_names[f.i] as queue_name,
          statuses[f.i] as status,
          attempts[f.i] as attempt,
          (case when statuses[f.i] = 'completed' then 100 else coalesce(progresses[f.i], 0) end)::smallint
            as progress,
          progress_messages[f.i] as progress_message,
          nullif(results[f.i]::jsonb, 'null'::jsonb) as result,
          error_types[f.i] as error_type,
          error_messages[f.i] as error_message,
          pg_catalog.to_timestamp(next_retry_ats[f.i]) as next_retry_at,
          pg_catalog.to_timestamp(enqueued_ats[f.i]) as enqueued_at,
          pg_catalog.to_timestamp(started_ats[f.i]) as started_at,
          pg_catalog.to_timestamp(event_ats[f.i]) as event_at
        from (
          select distinct on (e.job_id) e.job_id, e.i
          from ev as e
          where e.problem is null
          order by e.job_id, e.i
        ) as f
      ),
      updated as (
        update public.job_status as j set
          status = w.status,
          progress = w.progress,
          progress_message = w.progress_message,
          attempt = w.attempt,
          result = w.result,
          error_type = w.error_type,
          error_message = w.error_message,
          next_retry_at = w.next_retry_at,
          enqueued_at = coalesce(w.enqueued_at, j.enqueued_at),
          started_at = w.started_at,
          finished_at = case when w.status >= 'cancelled' then w.event_at end,
          event_at = w.event_at,
          updated_at = pg_catalog.now()
        from firsts as w
        where j.job_id = w.job_id
          -- not =: no index can serve IS NOT DISTINCT FROM, so job_id's is the only index
          -- condition, whatever the statistics (planned once per session: one planned on a table
          -- without statistics took the tenant's index with job_id as a filter, every event
          -- reading all of its tenant's rows; tests/integration/test_write_plan.py). The columns
          -- are NOT NULL: the outcome is that of =.
          and (j.tenant_id, j.user_id, j.actor_name, j.queue_name) is not distinct from
            (w.tenant_id, w.user_id, w.actor_name, w.queue_name)
          -- THE RULE: whether the event is newer news than the row
          and case
            when j.status >= 'cancelled' then
              w.status >= 'cancelled' and (w.event_at, w.status) < (j.event_at, j.status)
            when w.status >= 'cancelled' then true
            else (w.attempt, w.status, w.progress, w.event_at) > (j.attempt, j.status, j.progress, j.event_at)
          end
        returning j.job_id
      ),
      inserted as (
        -- the jobs without a row: the event is the row (none when every event updated one)
        insert into public.job_status as j (
          job_id, tenant_id, user_id, actor_name, queue_name, status, progress,
          progress_message, attempt, result, error_type, error_message, next_retry_at,
          enqueued_at, started_at, finished_at, event_at
        )
        select
          w.job_id, w.tenant_id, w.user_id, w.actor_name, w.queue_name, w.status, w.progress,
          w.progress_message, w.attempt, w.result, w.error_type, w.error_message, w.next_retry_at,
          w.enqueued_at, w.started_at, case when w.status >= 'cancelled' then w.event_at end,
          w.event_at
        from firsts as w
        where (select pg_catalog.count(*) from updated) < v_set
          and w.job_id not in (select u.job_id from updated as u)
          -- a job whose row this statement's snapshot holds is not inserted, even when the
          -- row is gone by now: a purge that deleted it committed after the snapshot, and its
          -- tombstone is visible to the next statement only (the job is then "missed", and
          -- the next look finds the tombstone)
          and not exists (select from public.job_status as r where r.job_id = w.job_id)
          -- a purged job never comes back
          and not exists (select from public.job_status_tombstones as t where t.job_id = w.job_id)
        order by w.job_id  -- one lock order for every writer
        on conflict (job_id) do nothing
        returning j.job_id
      ),
      tally as (
        select (select pg_catalog.count(*) from updated) + (select pg_catalog.count(*) from inserted) as n
      )
      select t.n,
        -- the usual answer, every event written, without looking at any event again
        case when t.n < v_set then pg_catalog.jsonb_build_object(
          'rejected', (
            select coalesce(pg_catalog.jsonb_object_agg(e.i, e.problem), '{}')
            from ev as e where e.problem is not null
          ),
          'written', (
            select coalesce(pg_catalog.jsonb_agg(x.job_id), '[]')
            from (select u.job_id from updated as u union all select n.job_id from inserted as n) as x
          )
        ) end
      into v_written, v_detail
      from tally as t;
    exception when data_exception or integrity_constraint_violation then
      if v_set > 1 then
        -- the slow path: the round again in halves, in order, until the bad events stand alone
        v_todo := coalesce(v_todo, array(select pg_catalog.generate_series(1, v_n)));
        v_half := (v_set + 1) / 2;
        v_rounds := pg_catalog.jsonb_build_array(
          pg_catalog.to_jsonb(v_todo[1:v_half]), pg_catalog.to_jsonb(v_todo[v_half + 1:v_set])
        ) || v_rounds;
      else
        get stacked diagnostics
          v_state = returned_sqlstate, v_constraint = constraint_name,
          v_column = column_name, v_message = message_text;
        v_rejected := v_rejected || pg_catalog.jsonb_build_object(
          coalesce(v_todo[1], 1)::text,
          case
            when v_constraint = 'job_status_tenant_id_fkey' then 'unknown_tenant'
            when v_constraint = 'job_status_user_id_fkey' then 'unknown_user'
            when v_state = '23502' then 'missing_field: ' || v_column
            when v_state = '23514' then 'invalid_value: ' || v_constraint
            else 'invalid_event: ' || v_state || ' ' || pg_catalog.left(v_message, 200)
          end
        );
      end if;
      v_written := -1;  -- nothing else to take from this round
      v_detail := null;
    end;

    if v_written = v_set then
      if v_todo is null then  -- the usual answer: one round wrote every event
        return pg_catalog.jsonb_build_object(
          'events', v_n, 'applied', v_n, 'stale', '[]'::jsonb, 'rejected', '[]'::jsonb
        );
      end if;
      v_jobs_written := v_jobs_written || array(select job_ids[t] from pg_catalog.unnest(v_todo) as t);
    elsif v_detail is not null then
      -- The events of the round that were not written, and why. Rejected by the checks of the
      -- write; a later event of its job: the next round; a job's first event that wrote
      -- nothing: once more in the next round (this round's snapshot may have missed a row that
      -- a concurrent writer was inserting; the next round sees it), and when it writes nothing
      -- again, the row held newer news (stale) or is another job's (identity_mismatch).
      v_rejected := v_rejected || (v_detail -> 'rejected');
      v_jobs_written := v_jobs_written
        || array(select pg_catalog.jsonb_array_elements_text(v_detail -> 'written'));
      select
        coalesce(pg_catalog.array_agg(c.i) filter (where c.outcome in ('next', 'missed')), '{}'),
        coalesce(pg_catalog.array_agg(c.i) filter (where c.outcome = 'missed'), '{}'),
        coalesce(pg_catalog.array_agg(c.i) filter (where c.outcome = 'stale'), '{}'),
        coalesce(pg_catalog.jsonb_object_agg(c.i, 'identity_mismatch') filter (where c.outcome = 'other'), '{}')
      into v_next, v_more_missed, v_more_stale, v_mismatch
      from (
        select w.i,
          case
            when w.rejected then 'rejected'
            when w.layer > 1 then 'next'
            when w.job_id in (select pg_catalog.jsonb_array_elements_text(v_detail -> 'written'))
              then 'applied'
            -- a purged job: its story is over; a late event is old news
            when r.job_id is null and t.job_id is not null then 'stale'
            when r.job_id is null or not w.i = any(v_missed) then 'missed'
            when (r.tenant_id, r.user_id, r.actor_name, r.queue_name)
              is distinct from (tenant_ids[w.i], user_ids[w.i], actor_names[w.i], queue_names[w.i])
              then 'other'
            else 'stale'
          end as outcome
        from (
          select e.i::integer as i, e.job_id, v_rejected ? e.i::text as rejected,
            pg_catalog.row_number() over (
              partition by e.job_id, v_rejected ? e.i::text order by e.i
            ) as layer
          from pg_catalog.unnest(job_ids) with ordinality as e (job_id, i)
          where v_todo is null or e.i = any(v_todo)
        ) as w
        left join public.job_status as r on r.job_id = w.job_id
        left join public.job_status_tombstones as t on t.job_id = w.job_id
      ) as c;
      v_missed := v_missed || v_more_missed;
      v_stale := v_stale || v_more_stale;
      v_rejected := v_rejected || v_mismatch;
      if v_next <> '{}' then  -- before any round queued earlier
        v_rounds := pg_catalog.jsonb_build_array(
          pg_catalog.to_jsonb(array(select x from pg_catalog.unnest(v_next) as x order by x))
        ) || v_rounds;
      end if;
    end if;

    exit when v_rounds = '[]'::jsonb;
    v_round := v_round + 1;
    if v_round > 4 * v_n + 8 then  -- rows inserted and deleted under us, round after round
      raise exception 'job_status_write could not settle its batch' using errcode = '40001';
    end if;
    v_todo := array(select pg_catalog.jsonb_array_elements_text(v_rounds -> 0)::integer);
    v_rounds := v_rounds - 0;
    v_set := pg_catalog.cardinality(v_todo);
  end loop;

  -- outcomes are per job: an event found stale in one round is applied when its job was
  -- written in another
  v_stale := array(
    select s from pg_catalog.unnest(v_stale) as s
    where not job_ids[s] = any(v_jobs_written) and not v_rejected ? s::text
    order by s
  );
  return pg_catalog.jsonb_build_object(
    'events', v_n,
    'applied', v_n - pg_catalog.cardinality(v_stale)
      - (select pg_catalog.count(*) from pg_catalog.jsonb_object_keys(v_rejected))::integer,
    'stale', pg_catalog.to_jsonb(v_stale),
    'rejected', coalesce(
      (select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(r.key::integer, r.value) order by r.key::integer)
       from pg_catalog.jsonb_each_text(v_rejected) as r),
      '[]'
    )
  );
end
$$;

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
