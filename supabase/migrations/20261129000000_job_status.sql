-- job_status: one row per Dramatiq message, kept in step with the job's lifecycle by
-- public.job_status_apply(events), the only writer. The state machine lives here, not in Python.

create table if not exists public.organizations (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  created_at timestamptz not null default now()
);
alter table public.organizations enable row level security;
revoke all on public.organizations from public, anon, authenticated;
grant select, insert, update, delete on public.organizations to service_role;

-- The declaration order IS the ordering of the state machine: pending < active < retrying, and
-- every terminal state sorts after every live one. Terminal states sort among themselves by
-- name, which breaks the (practically impossible) tie of two terminal events with one timestamp.
-- Never add a value without keeping both properties.
create type public.job_state as enum (
  'pending', 'active', 'retrying', 'cancelled', 'completed', 'failed', 'skipped'
);

create table public.job_status (
  id uuid primary key default gen_random_uuid(),
  job_id text not null unique check (length(job_id) between 1 and 255),
  tenant_id uuid not null references public.organizations (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  actor_name text not null check (length(actor_name) between 1 and 255),
  queue_name text not null check (length(queue_name) between 1 and 255),
  status public.job_state not null,
  progress smallint not null default 0 check (progress between 0 and 100),
  progress_message text check (length(progress_message) <= 1000),
  attempt integer not null default 0 check (attempt >= 0),
  result jsonb check (pg_column_size(result) <= 1048576),
  error_type text check (length(error_type) <= 255),
  error_message text check (length(error_message) <= 4000),
  next_retry_at timestamptz,
  enqueued_at timestamptz,
  started_at timestamptz,
  finished_at timestamptz,
  cancel_requested_at timestamptz,
  -- when the event that produced this row happened (part of the ordering key with attempt,
  -- status and progress); not when it was written, that is updated_at
  event_at timestamptz not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

comment on table public.job_status is
  'One row per Dramatiq message (job_id = message_id). Written only by public.job_status_apply.';

create index job_status_user_id_idx on public.job_status (user_id);
create index job_status_tenant_status_idx on public.job_status (tenant_id, status);
create index job_status_updated_at_idx on public.job_status (updated_at);

alter table public.job_status enable row level security;

-- End users read their own jobs (PostgREST, Realtime); nobody but service_role writes.
create policy job_status_select_own on public.job_status
  for select to authenticated
  using (user_id = (select auth.uid()));

revoke all on public.job_status from public, anon, authenticated;
grant select on public.job_status to authenticated;
grant select, insert, update, delete on public.job_status to service_role;

-- Upserts a batch of events as one statement. Several events of one job fold into the one that
-- wins the ordering; a row is only overwritten by an event that beats it:
--   * any terminal event beats any live one, and a terminal row only yields to a terminal event
--     that happened earlier (so the first outcome stands, whatever order the events arrive in);
--   * between live events, the greater (attempt, status, progress, event_at) wins, so late,
--     duplicated and reordered events converge and progress never moves backwards in an attempt.
-- Returns the job ids whose rows were written. Raises on any bad event; job_status_apply isolates.
create function public.job_status_upsert(events jsonb)
returns setof text
language sql
security invoker
set search_path = ''
as $$
  with parsed as (
    select e.*, e.status >= 'cancelled'::public.job_state as terminal
    from jsonb_to_recordset(events) as e (
      job_id text, status public.job_state, attempt integer,
      tenant_id uuid, user_id uuid, actor_name text, queue_name text,
      progress smallint, progress_message text, result jsonb,
      error_type text, error_message text,
      next_retry_at double precision, enqueued_at double precision,
      started_at double precision, event_at double precision
    )
  ),
  winners as (
    select distinct on (p.job_id) p.*
    from parsed as p
    order by p.job_id,
      p.terminal desc,
      case when p.terminal then p.event_at end asc,
      case when p.terminal then p.status end asc,
      p.attempt desc, p.status desc, coalesce(p.progress, 0) desc, p.event_at desc
  )
  insert into public.job_status as j (
    job_id, tenant_id, user_id, actor_name, queue_name, status, progress, progress_message,
    attempt, result, error_type, error_message, next_retry_at, enqueued_at, started_at,
    finished_at, event_at
  )
  select
    w.job_id, w.tenant_id, w.user_id, w.actor_name, w.queue_name, w.status,
    case when w.status = 'completed' then 100 else coalesce(w.progress, 0) end,
    w.progress_message, w.attempt, nullif(w.result, 'null'::jsonb), w.error_type,
    w.error_message, pg_catalog.to_timestamp(w.next_retry_at),
    pg_catalog.to_timestamp(w.enqueued_at), pg_catalog.to_timestamp(w.started_at),
    case when w.terminal then pg_catalog.to_timestamp(w.event_at) end,
    pg_catalog.to_timestamp(w.event_at)
  from winners as w
  order by w.job_id  -- one lock order for every writer: concurrent batches cannot deadlock
  on conflict (job_id) do update set
    status = excluded.status,
    progress = excluded.progress,
    progress_message = excluded.progress_message,
    attempt = excluded.attempt,
    result = excluded.result,
    error_type = excluded.error_type,
    error_message = excluded.error_message,
    next_retry_at = excluded.next_retry_at,
    enqueued_at = coalesce(excluded.enqueued_at, j.enqueued_at),
    started_at = excluded.started_at,
    finished_at = excluded.finished_at,
    event_at = excluded.event_at,
    updated_at = pg_catalog.now()
  where case
    when j.status >= 'cancelled' then
      excluded.status >= 'cancelled'
      and (excluded.event_at, excluded.status) < (j.event_at, j.status)
    when excluded.status >= 'cancelled' then true
    else (excluded.attempt, excluded.status, excluded.progress, excluded.event_at)
       > (j.attempt, j.status, j.progress, j.event_at)
  end
  returning j.job_id
$$;

-- Applies a batch of status events (a JSON array of objects, times in epoch seconds) and
-- reports one outcome per event: `applied` (its job's row was written), `stale` (the row already
-- held a newer state) or `rejected` with a reason. A bad event (unknown tenant or user, a value
-- out of range, a malformed field) is rejected on its own; the rest of the batch still lands.
create function public.job_status_apply(events jsonb)
returns table (idx integer, job_id text, outcome text, reason text)
language plpgsql
security invoker
set search_path = ''
as $$
declare
  written text[];
  rejected jsonb := '{}'::jsonb;  -- idx -> reason
  ev record;
  one_written text[];
  v_state text;
  v_constraint text;
  v_column text;
  v_message text;
begin
  if events is null or pg_catalog.jsonb_typeof(events) <> 'array' then
    raise exception 'job_status_apply expects a JSON array of events'
      using errcode = '22023';
  end if;

  begin
    select coalesce(pg_catalog.array_agg(u), '{}') into written
    from public.job_status_upsert(events) as u;
  exception when data_exception or integrity_constraint_violation then
    -- Slow path, only when the batch holds a bad event: one event at a time, each in its own
    -- subtransaction. The order does not matter: the upsert converges in any order.
    written := '{}';
    for ev in
      select e.doc, e.ord::integer as i
      from pg_catalog.jsonb_array_elements(events) with ordinality as e (doc, ord)
    loop
      begin
        select coalesce(pg_catalog.array_agg(u), '{}') into one_written
        from public.job_status_upsert(pg_catalog.jsonb_build_array(ev.doc)) as u;
        written := written || one_written;
      exception when data_exception or integrity_constraint_violation then
        get stacked diagnostics
          v_state = returned_sqlstate, v_constraint = constraint_name,
          v_column = column_name, v_message = message_text;
        rejected := rejected || pg_catalog.jsonb_build_object(
          ev.i::text,
          case
            when v_constraint = 'job_status_tenant_id_fkey' then 'unknown_tenant'
            when v_constraint = 'job_status_user_id_fkey' then 'unknown_user'
            when v_state = '23502' then 'missing_field: ' || v_column
            when v_state = '23514' then 'invalid_value: ' || v_constraint
            else 'invalid_event: ' || v_state || ' ' || pg_catalog.left(v_message, 200)
          end
        );
      end;
    end loop;
  end;

  return query
    select e.ord::integer,
           e.doc ->> 'job_id',
           case
             when rejected ? e.ord::text then 'rejected'
             when w.job_id is not null then 'applied'
             else 'stale'
           end,
           rejected ->> e.ord::text
    from pg_catalog.jsonb_array_elements(events) with ordinality as e (doc, ord)
    left join (select distinct u.job_id from pg_catalog.unnest(written) as u (job_id)) as w
      on w.job_id = e.doc ->> 'job_id'
    order by e.ord;
end
$$;

-- Deletes finished rows (terminal, finished and last written before now() - older_than), at most max_rows per
-- call so that a large purge never holds long locks; call it again until it returns 0.
create function public.job_status_purge(older_than interval, max_rows integer default 5000)
returns integer
language sql
security invoker
set search_path = ''
as $$
  with doomed as (
    select j.id
    from public.job_status as j
    where j.status >= 'cancelled'::public.job_state
      and j.updated_at < pg_catalog.now() - older_than  -- the indexed bound
      and j.finished_at < pg_catalog.now() - older_than
    order by j.updated_at
    limit greatest(max_rows, 0)
    for update skip locked
  ),
  gone as (
    delete from public.job_status as j using doomed as d where j.id = d.id returning 1
  )
  select count(*)::integer from gone
$$;

revoke all on function public.job_status_upsert(jsonb) from public, anon, authenticated;
revoke all on function public.job_status_apply(jsonb) from public, anon, authenticated;
revoke all on function public.job_status_purge(interval, integer) from public, anon, authenticated;
grant execute on function public.job_status_upsert(jsonb) to service_role;
grant execute on function public.job_status_apply(jsonb) to service_role;
grant execute on function public.job_status_purge(interval, integer) to service_role;

-- Supabase Realtime pushes row changes (filtered by RLS) to subscribed browsers.
do $$
begin
  if exists (select 1 from pg_catalog.pg_publication where pubname = 'supabase_realtime') then
    alter publication supabase_realtime add table public.job_status;
  end if;
end
$$;
