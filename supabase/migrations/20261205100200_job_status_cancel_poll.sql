-- What the fleet's cancel poller reads (middleware/cancel_poll.py): the cancellation requests
-- stamped in the database, so that workers honour one made by public.cancel_job, by
-- job_status_request_cancel or by a plain `update ... set cancel_requested_at = now()`.
--
-- One worker process at a time (a short Redis lease) asks, about once a second for the whole
-- fleet, for the stamps since a watermark kept in Redis, and copies those of live jobs into the
-- Redis flags every worker already reads. A partial index keeps the question cheap: it holds
-- only stamped rows, and status writes never change cancel_requested_at (nor job_id), so they
-- stay heap-only updates; the stamp itself is the one write that touches the index.
--
-- On a large table, build the index with `create index concurrently` before applying this
-- migration: `if not exists` then skips it.

create index if not exists job_status_cancel_requested_idx
  on public.job_status (cancel_requested_at, job_id)
  where cancel_requested_at is not null;

-- The stamps after (since, after_job_id), in (cancel_requested_at, job_id) order, at most
-- max_rows (1000 at most): the poller pages with the last row's key. `live`: the job has not
-- finished (only those need a flag; the others still move the watermark on).
create function public.job_status_cancel_requests(
  since timestamptz,
  after_job_id text default '',
  max_rows integer default 500
)
returns table (job_id text, cancel_requested_at timestamptz, live boolean)
language sql
stable
security invoker
set search_path = ''
as $$
  select j.job_id, j.cancel_requested_at, j.status < 'cancelled'::public.job_state
  from public.job_status as j
  where j.cancel_requested_at is not null
    and (j.cancel_requested_at, j.job_id)
      > (job_status_cancel_requests.since, job_status_cancel_requests.after_job_id)
  order by j.cancel_requested_at, j.job_id
  limit greatest(least(job_status_cancel_requests.max_rows, 1000), 0)
$$;

-- Stamps the rows of jobs a producer flagged before their row existed, each with the time of
-- its request (requested_ats, in step with job_ids): the request was made while the job was
-- live, so the row is stamped whatever its status now (the worker may have skipped the job and
-- written `cancelled` already). A row stamped already keeps its stamp. Returns the ids that have
-- a row: the poller forgets those and asks again later for the others.
create function public.job_status_stamp_cancels(job_ids text[], requested_ats timestamptz[])
returns setof text
language sql
volatile
security invoker
set search_path = ''
as $$
  with asked as (
    select a.job_id, pg_catalog.min(a.requested_at) as requested_at
    -- the multi-argument unnest is FROM syntax: it cannot be schema-qualified
    from unnest(job_status_stamp_cancels.job_ids, job_status_stamp_cancels.requested_ats)
      as a (job_id, requested_at)
    group by a.job_id
  ),
  found as (
    select j.id, j.job_id, j.cancel_requested_at, a.requested_at
    from public.job_status as j
    join asked as a on a.job_id = j.job_id
    order by j.job_id  -- one lock order for every writer
    for update of j
  ),
  stamp as (
    update public.job_status as j
    set cancel_requested_at = coalesce(f.requested_at, pg_catalog.now()), updated_at = pg_catalog.now()
    from found as f
    where j.id = f.id and f.cancel_requested_at is null
  )
  select f.job_id from found as f
$$;

revoke all on function public.job_status_cancel_requests(timestamptz, text, integer)
  from public, anon, authenticated;
revoke all on function public.job_status_stamp_cancels(text[], timestamptz[]) from public, anon, authenticated;
grant execute on function public.job_status_cancel_requests(timestamptz, text, integer) to service_role;
grant execute on function public.job_status_stamp_cancels(text[], timestamptz[]) to service_role;
