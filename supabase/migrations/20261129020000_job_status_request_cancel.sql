-- Cancellation requests: public.job_status_request_cancel(job_id) stamps cancel_requested_at on a
-- job that has not finished yet. The workers do not read this column (they read a cheap flag on
-- the broker's Redis that coursegen.jobs.cancel sets as well); it is the durable, user-visible
-- record of the request, and it tells the caller what the job's state was.
--
-- Returns one row for a known job, none for an unknown one:
--   status               the job's status when the request was made
--   cancel_requested_at  when cancellation was (first) requested, or null
--   stamped              true when this call stamped the row; false when the job had already
--                        finished (it is left alone) or cancellation was already requested
-- The state machine (public.job_status_upsert) never writes cancel_requested_at, so the stamp
-- survives every later event.
create function public.job_status_request_cancel(job_id text)
returns table (status public.job_state, cancel_requested_at timestamptz, stamped boolean)
language sql
security invoker
set search_path = ''
as $$
  with target as (
    select j.id, j.status, j.cancel_requested_at
    from public.job_status as j
    where j.job_id = job_status_request_cancel.job_id
    for update
  ),
  stamp as (
    update public.job_status as j
    set cancel_requested_at = pg_catalog.now(), updated_at = pg_catalog.now()
    from target as t
    where j.id = t.id
      and t.status < 'cancelled'::public.job_state  -- live: pending, active or retrying
      and t.cancel_requested_at is null
    returning j.id, j.cancel_requested_at
  )
  select t.status, coalesce(s.cancel_requested_at, t.cancel_requested_at), s.id is not null
  from target as t
  left join stamp as s on s.id = t.id
$$;

revoke all on function public.job_status_request_cancel(text) from public, anon, authenticated;
grant execute on function public.job_status_request_cancel(text) to service_role;
