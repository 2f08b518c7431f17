-- Cheaper status writes: two changes, each measured in benchmarks/README.md.
--
-- 1. job_status_upsert names the id of the row it would insert. INSERT ... ON CONFLICT builds
--    the whole insert tuple, column defaults included, before it finds the conflict, so every
--    status write used to call gen_random_uuid() for an id that was then thrown away: nearly
--    every write is an update of the row that the pending event made. Now the row's existing id
--    is looked up (one probe of the job_id index, whose page the conflict check reads next) and
--    gen_random_uuid() runs only for a new row. A concurrent delete or insert between the
--    lookup and the write is harmless: a deleted row's id is free again, and a row inserted
--    meanwhile is found by the conflict check on job_id, which never changes the id.
--    Without OpenSSL (the embedded PostgreSQL of the demo and the benchmark) gen_random_uuid()
--    reads /dev/urandom through open/read/close, ~3.6 us; with it (Debian, Supabase) ~0.9 us.
--
-- 2. fillfactor 50 (was 70): a page keeps room for a new version of each of its rows, so a batch
--    that updates every row of a page in one transaction stays heap-only (HOT) to the last row.
--    At 70, about 30% of such updates found the page full and inserted into every index. The
--    table takes ~1.4 times the pages; rows are small and purged (job_status_purge). As before,
--    the setting applies to pages written from now on (`vacuum full` rewrites the old ones).

alter table public.job_status set (fillfactor = 50);

create or replace function public.job_status_upsert(events jsonb)
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
    id, job_id, tenant_id, user_id, actor_name, queue_name, status, progress, progress_message,
    attempt, result, error_type, error_message, next_retry_at, enqueued_at, started_at,
    finished_at, event_at
  )
  select
    -- the row's own id when it exists (the usual case: the write becomes an update), so the
    -- column default is only evaluated for a row that is really inserted
    coalesce((select c.id from public.job_status as c where c.job_id = w.job_id), pg_catalog.gen_random_uuid()),
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
