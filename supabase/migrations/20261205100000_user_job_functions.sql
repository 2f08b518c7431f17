-- Owner-scoped reads and cancellation for producers acting for a user: the ownership check
-- lives here, not only in Python.
--
-- A producer (a web API, the `coursegen` CLI) reads statuses with service credentials, which
-- bypass row-level security. These functions take the acting user and tenant and answer only for
-- that owner's jobs: another owner's job is not there, exactly as an unknown one (no row, the
-- same query plan: the job_id index, then the owner compared on the row found). coursegen.jobs'
-- PostgreSQL and Supabase readers call them for `Jobs(...).as_user(user, tenant)`; the operator
-- view (`Jobs(...).operator()`) reads the table itself.
--
--   user_job_status(acting_user_id, acting_tenant_id, job_id)   the job's row, or none
--   user_job_list(acting_user_id, acting_tenant_id, only_status, max_rows)
--                                                 the owner's latest jobs, newest first
--   user_job_cancel(acting_user_id, acting_tenant_id, job_id)
--                                                 job_status_request_cancel for the owner's job
--
-- Security invoker, granted to service_role only: signed-in users read their rows through RLS
-- and cancel through public.cancel_job.

create function public.user_job_status(acting_user_id uuid, acting_tenant_id uuid, job_id text)
returns setof public.job_status
language sql
stable
security invoker
set search_path = ''
as $$
  select j.*
  from public.job_status as j
  where j.job_id = user_job_status.job_id
    and j.user_id = user_job_status.acting_user_id
    and j.tenant_id = user_job_status.acting_tenant_id
$$;

create function public.user_job_list(
  acting_user_id uuid,
  acting_tenant_id uuid,
  only_status public.job_state default null,
  max_rows integer default 50
)
returns setof public.job_status
language sql
stable
security invoker
set search_path = ''
as $$
  select j.*
  from public.job_status as j
  where j.user_id = user_job_list.acting_user_id  -- job_status_user_created_idx
    and j.tenant_id = user_job_list.acting_tenant_id
    and (user_job_list.only_status is null or j.status = user_job_list.only_status)
  order by j.created_at desc, j.job_id desc
  limit greatest(least(user_job_list.max_rows, 1000), 0)
$$;

-- As job_status_request_cancel: one row for a job of this owner (its status when asked, when
-- cancellation was first requested, whether this call stamped it), none otherwise. Only the
-- owner's row is locked: another owner's is never waited for.
create function public.user_job_cancel(acting_user_id uuid, acting_tenant_id uuid, job_id text)
returns table (status public.job_state, cancel_requested_at timestamptz, stamped boolean)
language sql
security invoker
set search_path = ''
as $$
  with target as (
    select j.id, j.status, j.cancel_requested_at
    from public.job_status as j
    where j.job_id = user_job_cancel.job_id
      and j.user_id = user_job_cancel.acting_user_id
      and j.tenant_id = user_job_cancel.acting_tenant_id
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

revoke all on function public.user_job_status(uuid, uuid, text) from public, anon, authenticated;
revoke all on function public.user_job_list(uuid, uuid, public.job_state, integer)
  from public, anon, authenticated;
revoke all on function public.user_job_cancel(uuid, uuid, text) from public, anon, authenticated;
grant execute on function public.user_job_status(uuid, uuid, text) to service_role;
grant execute on function public.user_job_list(uuid, uuid, public.job_state, integer) to service_role;
grant execute on function public.user_job_cancel(uuid, uuid, text) to service_role;
