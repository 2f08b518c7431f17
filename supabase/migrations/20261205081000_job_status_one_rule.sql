-- One transition rule, one write function; a job's identity and sane times on every path.
--
-- public.job_status_write(...) is now the only writer of job_status. It takes a batch of status
-- events as typed arrays (one element per event: what psycopg sends in binary, and what PostgREST
-- passes from the JSON arrays of an RPC body) and holds, once each:
--
--   * THE RULE, the one place that orders a job's states: the predicate of its UPDATE. An event
--     beats a row when it is terminal and the row is live; or both are terminal and the event
--     happened earlier (the first outcome stands); or both are live and the event's (attempt,
--     status, progress, event_at) is greater. A tie is stale. There is no second copy for
--     folding a batch: a job's events are applied in batch order, its first in the first round,
--     its second in the next, ..., which is what applying them one by one does, and what the rule
--     makes converge in any order. A batch from the writer holds one event per job (it
--     coalesces in memory, by StatusEvent.sort_key, which a test holds to this rule), so it
--     takes one round, one statement;
--   * the SET list: what an event writes into an existing row; a new row is the event itself;
--   * the checks: an event whose tenant, user, actor or queue differ from its row's is rejected
--     (identity_mismatch) on every path, and so is one with a time that is not finite and
--     within [2000-01-01, 2200-01-01] (invalid_time: <field>). Anything the table itself
--     refuses (a missing field, a progress of 150, an unknown tenant, a text too long) makes
--     its round fail; the round is then run again in halves, in order, until the bad events
--     stand alone and are rejected with the constraint's name (missing_field: status,
--     invalid_value: job_status_progress_check, unknown_tenant, ...): the slow path, on the
--     same statement.
--
-- It answers with a JSON object that is always complete: {"events": n, "applied": a,
-- "stale": [positions], "rejected": [[position, reason], ...]} where a + stale + rejected = n
-- (positions are 1-based). Outcomes are per job, as before: every event of a job whose row
-- this call wrote is "applied"; "stale" when the row already held newer news.
--
-- public.job_status_apply(jsonb) stays, for callers that send JSON objects (and for old
-- workers): it turns the objects into the arrays (an object that does not convert is rejected
-- on its own) and calls job_status_write. job_status_upsert and job_status_update, which each
-- held a copy of the rule, are dropped: a store that still calls job_status_update gets
-- "undefined function" and falls back to job_status_apply (the store before this migration
-- does so with one warning).
--
-- Times: one CHECK constraint holds every event-given time in [2000-01-01, 2200-01-01]. Not a
-- window around now(): an outbox replays events days old after a long outage, a producer's
-- clock may be off, and a constraint must not depend on when a row is checked; the bounds catch
-- what is broken (a zero or monotonic clock, milliseconds taken for seconds, -Infinity), and
-- are those of the events' own check (middleware/storable.py). The constraint is added NOT
-- VALID here: enforced from now on, for every new row version, without reading the table; ADD
-- CONSTRAINT takes an ACCESS EXCLUSIVE lock only until this short transaction commits
-- (lock_timeout below: on a busy table the migration fails fast and can be run again, instead
-- of queueing every writer behind it). The next migration clamps the times written before (the
-- -Infinity the old functions accepted) and validates the constraint under a SHARE UPDATE
-- EXCLUSIVE lock, which lets reads and writes go on while it scans the table.
--
-- Cost (benchmarks/README.md, "One rule"): backend CPU per `completed` event on pending rows,
-- 20,000 events in batches of 400, /proc/<pid>/schedstat, median of 7 rounds, two runs on the
-- shared VM; before (job_status_update) -> after:
--   PostgreSQL 15 (Debian): 8.95 -> 8.34 and 10.71 -> 10.15 us; with the Broadcast trigger of
--     20261205080000, 19.46 -> 18.10 and 25.03 -> 23.80 (this function's plan is kept for the
--     session; the SQL function before was planned at every call);
--   PostgreSQL 18 (embedded): 7.66 -> 8.30 and 8.03 -> 8.29 us, the cost of the new checks
--     (without them 7.54 against 7.43); with the trigger 18.97 -> 19.16 and 21.00 -> 20.66;
--   through PostgREST, the Supabase store's path (before: job_status_apply): 12.82 -> 9.18 us on
--     18, 15.88 -> 9.09 on 15.
--   The insert path's two probes for purged jobs (job_status_tombstones) add ~1 us to a new job's
--     `pending` event; updates never read them (costs in 20261205120000's header).

set local lock_timeout = '5s';

alter table public.job_status
  add constraint job_status_times_check check (
    event_at >= '2000-01-01 00:00:00+00' and event_at <= '2200-01-01 00:00:00+00'
    and enqueued_at >= '2000-01-01 00:00:00+00' and enqueued_at <= '2200-01-01 00:00:00+00'
    and started_at >= '2000-01-01 00:00:00+00' and started_at <= '2200-01-01 00:00:00+00'
    and next_retry_at >= '2000-01-01 00:00:00+00' and next_retry_at <= '2200-01-01 00:00:00+00'
    and finished_at >= '2000-01-01 00:00:00+00' and finished_at <= '2200-01-01 00:00:00+00'
  ) not valid;

-- Jobs whose rows retention purged (20261205120000 fills it): job_status_write never inserts a
-- row for them again (its insert's two probes, marked below; the event is stale).
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

create function public.job_status_write(
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

-- Applies a batch of status events given as a JSON array of objects (times in epoch seconds)
-- through job_status_write, and reports one outcome per event: `applied`, `stale` or `rejected`
-- with a reason. An object whose fields do not convert (a status that is not one, an attempt
-- that is not an integer) is rejected on its own.
create or replace function public.job_status_apply(events jsonb)
returns table (idx integer, job_id text, outcome text, reason text)
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_n integer;
  v_bad jsonb := '{}';  -- position -> why its object did not convert
  v_answer jsonb;
  v_job_ids text[];
  v_statuses public.job_state[];
  v_attempts integer[];
  v_tenant_ids uuid[];
  v_user_ids uuid[];
  v_actor_names text[];
  v_queue_names text[];
  v_event_ats double precision[];
  v_progresses smallint[];
  v_progress_messages text[];
  v_results text[];
  v_error_types text[];
  v_error_messages text[];
  v_next_retry_ats double precision[];
  v_enqueued_ats double precision[];
  v_started_ats double precision[];
  v_state text;
  v_message text;
  v_doc jsonb;
  v_i integer;
begin
  if events is null or pg_catalog.jsonb_typeof(events) <> 'array' then
    raise exception 'job_status_apply expects a JSON array of events'
      using errcode = '22023';
  end if;
  v_n := pg_catalog.jsonb_array_length(events);
  if v_n = 0 then
    return;
  end if;

  begin
    select
      pg_catalog.array_agg(e.job_id order by e.i), pg_catalog.array_agg(e.status order by e.i),
      pg_catalog.array_agg(e.attempt order by e.i), pg_catalog.array_agg(e.tenant_id order by e.i),
      pg_catalog.array_agg(e.user_id order by e.i), pg_catalog.array_agg(e.actor_name order by e.i),
      pg_catalog.array_agg(e.queue_name order by e.i), pg_catalog.array_agg(e.event_at order by e.i),
      pg_catalog.array_agg(e.progress order by e.i), pg_catalog.array_agg(e.progress_message order by e.i),
      pg_catalog.array_agg(e.result::text order by e.i), pg_catalog.array_agg(e.error_type order by e.i),
      pg_catalog.array_agg(e.error_message order by e.i), pg_catalog.array_agg(e.next_retry_at order by e.i),
      pg_catalog.array_agg(e.enqueued_at order by e.i), pg_catalog.array_agg(e.started_at order by e.i)
    into
      v_job_ids, v_statuses, v_attempts, v_tenant_ids, v_user_ids, v_actor_names, v_queue_names,
      v_event_ats, v_progresses, v_progress_messages, v_results, v_error_types, v_error_messages,
      v_next_retry_ats, v_enqueued_ats, v_started_ats
    from rows from (
      pg_catalog.jsonb_to_recordset(events) as (
        job_id text, status public.job_state, attempt integer, tenant_id uuid, user_id uuid,
        actor_name text, queue_name text, event_at double precision, progress smallint,
        progress_message text, result jsonb, error_type text, error_message text,
        next_retry_at double precision, enqueued_at double precision, started_at double precision
      )
    ) with ordinality as e (
      job_id, status, attempt, tenant_id, user_id, actor_name, queue_name, event_at, progress,
      progress_message, result, error_type, error_message, next_retry_at, enqueued_at,
      started_at, i
    );
  exception when data_exception then
    -- object by object: one that does not convert takes its place as an empty event
    v_job_ids := '{}'; v_statuses := '{}'; v_attempts := '{}'; v_tenant_ids := '{}';
    v_user_ids := '{}'; v_actor_names := '{}'; v_queue_names := '{}'; v_event_ats := '{}';
    v_progresses := '{}'; v_progress_messages := '{}'; v_results := '{}'; v_error_types := '{}';
    v_error_messages := '{}'; v_next_retry_ats := '{}'; v_enqueued_ats := '{}'; v_started_ats := '{}';
    for v_i in 1 .. v_n loop
      v_doc := events -> (v_i - 1);
      begin
        select
          v_job_ids || e.job_id, v_statuses || e.status, v_attempts || e.attempt,
          v_tenant_ids || e.tenant_id, v_user_ids || e.user_id, v_actor_names || e.actor_name,
          v_queue_names || e.queue_name, v_event_ats || e.event_at, v_progresses || e.progress,
          v_progress_messages || e.progress_message, v_results || e.result::text,
          v_error_types || e.error_type, v_error_messages || e.error_message,
          v_next_retry_ats || e.next_retry_at, v_enqueued_ats || e.enqueued_at,
          v_started_ats || e.started_at
        into
          v_job_ids, v_statuses, v_attempts, v_tenant_ids, v_user_ids, v_actor_names,
          v_queue_names, v_event_ats, v_progresses, v_progress_messages, v_results,
          v_error_types, v_error_messages, v_next_retry_ats, v_enqueued_ats, v_started_ats
        from pg_catalog.jsonb_to_record(v_doc) as e (
          job_id text, status public.job_state, attempt integer, tenant_id uuid, user_id uuid,
          actor_name text, queue_name text, event_at double precision, progress smallint,
          progress_message text, result jsonb, error_type text, error_message text,
          next_retry_at double precision, enqueued_at double precision, started_at double precision
        );
      exception when data_exception then
        get stacked diagnostics v_state = returned_sqlstate, v_message = message_text;
        v_bad := v_bad || pg_catalog.jsonb_build_object(
          v_i::text, 'invalid_event: ' || v_state || ' ' || pg_catalog.left(v_message, 200)
        );
        v_job_ids := v_job_ids || null::text; v_statuses := v_statuses || null::public.job_state;
        v_attempts := v_attempts || null::integer; v_tenant_ids := v_tenant_ids || null::uuid;
        v_user_ids := v_user_ids || null::uuid; v_actor_names := v_actor_names || null::text;
        v_queue_names := v_queue_names || null::text;
        v_event_ats := v_event_ats || null::double precision;
        v_progresses := v_progresses || null::smallint;
        v_progress_messages := v_progress_messages || null::text;
        v_results := v_results || null::text; v_error_types := v_error_types || null::text;
        v_error_messages := v_error_messages || null::text;
        v_next_retry_ats := v_next_retry_ats || null::double precision;
        v_enqueued_ats := v_enqueued_ats || null::double precision;
        v_started_ats := v_started_ats || null::double precision;
      end;
    end loop;
  end;

  v_answer := public.job_status_write(
    v_job_ids, v_statuses, v_attempts, v_tenant_ids, v_user_ids, v_actor_names, v_queue_names,
    v_event_ats, v_progresses, v_progress_messages, v_results, v_error_types, v_error_messages,
    v_next_retry_ats, v_enqueued_ats, v_started_ats
  );

  return query
    select e.ord::integer,
           e.doc ->> 'job_id',
           case
             when v_bad ? e.ord::text or r.reason is not null then 'rejected'
             when s.i is not null then 'stale'
             else 'applied'
           end,
           coalesce(v_bad ->> e.ord::text, r.reason)
    from pg_catalog.jsonb_array_elements(events) with ordinality as e (doc, ord)
    left join (
      select (x.value ->> 0)::integer as i, x.value ->> 1 as reason
      from pg_catalog.jsonb_array_elements(v_answer -> 'rejected') as x
    ) as r on r.i = e.ord
    left join (
      select y.value::integer as i from pg_catalog.jsonb_array_elements_text(v_answer -> 'stale') as y
    ) as s on s.i = e.ord
    order by e.ord;
end
$$;

drop function public.job_status_upsert(jsonb);
drop function public.job_status_update(
  text[], public.job_state[], integer[], smallint[], text[], text[], text[], text[],
  double precision[], double precision[], double precision[], double precision[]
);

revoke all on function public.job_status_write(
  text[], public.job_state[], integer[], uuid[], uuid[], text[], text[], double precision[],
  smallint[], text[], text[], text[], text[], double precision[], double precision[], double precision[]
) from public, anon, authenticated;
grant execute on function public.job_status_write(
  text[], public.job_state[], integer[], uuid[], uuid[], text[], text[], double precision[],
  smallint[], text[], text[], text[], text[], double precision[], double precision[], double precision[]
) to service_role;
revoke all on function public.job_status_apply(jsonb) from public, anon, authenticated;
grant execute on function public.job_status_apply(jsonb) to service_role;

comment on table public.job_status is
  'One row per Dramatiq message (job_id = message_id). Written only by public.job_status_write '
  '(public.job_status_apply calls it).';
